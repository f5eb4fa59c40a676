// One streamed chat completion through the xk6-sse extension: time to first token is the
// first event with content, time per output token the spacing of the rest. Needs a k6 built
// with the extension (xk6 build --with github.com/phymbert/xk6-sse); see sse.ts.
import sse from 'k6/x/sse';
import { API_KEY, HOST } from './config.ts';
import { errors, outputTokens, tpot, ttft } from './chat.ts';

export function chatSse({ body, shape }: { body: string; shape: string }): void {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
  const started = Date.now();
  let first = 0;
  let last = 0;
  let tokens = 0;
  let failed = '';
  const response = sse.open(
    `${HOST}/v1/chat/completions`,
    { method: 'POST', body, headers, tags: { name: 'chat-sse', shape } },
    (client) => {
      client.on('event', (event) => {
        if (event.data === '[DONE]') {
          client.close();
          return;
        }
        const data = JSON.parse(event.data) as {
          error?: unknown;
          choices?: Array<{ delta?: { content?: string } }>;
        };
        if (data.error) failed = 'stream_error';
        if (data.choices?.[0]?.delta?.content) {
          const now = Date.now();
          if (first === 0) first = now;
          last = now;
          tokens++;
        }
      });
      client.on('error', () => {
        failed = 'stream_error';
      });
    },
  );
  if (response.status !== 200) {
    errors.add(1, { type: `http_${response.status}`, shape });
    return;
  }
  if (failed || first === 0) {
    errors.add(1, { type: failed || 'no_tokens', shape });
    return;
  }
  ttft.add(first - started, { shape });
  outputTokens.add(tokens, { shape });
  if (tokens > 1) tpot.add((last - first) / (tokens - 1), { shape });
}
