// Reads server-sent events (text/event-stream, as the gateway streams chat completions) for
// tests: each event's data, as a whole body or as the events arrive.

/** Feeds SSE text in pieces; calls `emit` with each complete event's data. */
function sseParser(emit: (data: string) => void) {
  let buffer = '';
  let data: string[] = [];
  const line = (l: string) => {
    if (l === '') {
      if (data.length > 0) emit(data.join('\n'));
      data = [];
    } else if (l.startsWith('data:')) {
      data.push(l.slice(l.startsWith('data: ') ? 6 : 5));
    }
    // Comments (":...") and the other fields (event, id, retry) carry no data.
  };
  return {
    push(text: string) {
      buffer += text;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop()!;
      lines.forEach(line);
    },
    /** The end of the stream: an event cut short of its blank line still counts. */
    end() {
      if (buffer !== '') line(buffer);
      buffer = '';
      line('');
    },
  };
}

/** The data of each event of a whole SSE body. */
export function parseSse(text: string): string[] {
  const events: string[] = [];
  const parser = sseParser((data) => events.push(data));
  parser.push(text);
  parser.end();
  return events;
}

/**
 * The data of each event of a streamed response, as it arrives. Leaving the loop early
 * releases the body without cancelling it: the request goes on (until its signal aborts).
 */
export async function* sseEvents(response: Response): AsyncGenerator<string> {
  if (!response.body) throw new Error(`no body to read events from (status ${response.status})`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const ready: string[] = [];
  const parser = sseParser((data) => ready.push(data));
  try {
    for (;;) {
      const { done, value } = await reader.read();
      parser.push(done ? decoder.decode() : decoder.decode(value, { stream: true }));
      if (done) parser.end();
      while (ready.length > 0) yield ready.shift()!;
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

/** The data of every event of a streamed response, to its end. */
export async function readSse(response: Response): Promise<string[]> {
  const events: string[] = [];
  for await (const data of sseEvents(response)) events.push(data);
  return events;
}
