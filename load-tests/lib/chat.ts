// One chat completion, with Loupe's custom metrics: time to first token, time per output
// token, output tokens, and errors by type.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { API_KEY, HOST, STREAM } from './config.ts';

export const ttft = new Trend('loupe_ttft', true);
export const tpot = new Trend('loupe_tpot', true);
export const outputTokens = new Counter('loupe_output_tokens');
export const errors = new Counter('loupe_errors');

interface Usage {
  completion_tokens: number;
}

/** Output tokens of a response: from `usage` (the last SSE chunk carrying it, or the JSON). */
function usageOf(body: string): Usage | undefined {
  if (!STREAM) return (JSON.parse(body) as { usage?: Usage }).usage;
  let usage: Usage | undefined;
  for (const line of body.split('\n')) {
    if (!line.startsWith('data: {')) continue;
    const event = JSON.parse(line.slice(6)) as { usage?: Usage; error?: unknown };
    if (event.error) return undefined;
    if (event.usage) usage = event.usage;
  }
  return usage;
}

/** One request; `shape` tags its HTTP metrics and Loupe's, so each shape has its own figures. */
export function chat({ body, shape }: { body: string; shape: string }): void {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (API_KEY) headers.authorization = `Bearer ${API_KEY}`;
  const res = http.post(`${HOST}/v1/chat/completions`, body, {
    headers,
    timeout: '600s',
    tags: { name: 'chat', shape },
  });
  const tags = { shape };
  const ok = check(res, { 'status is 200': (r) => r.status === 200 });
  if (!ok) {
    errors.add(1, { type: `http_${res.status}`, shape });
    return;
  }
  const usage = usageOf(res.body as string);
  if (!usage) {
    errors.add(1, { type: 'stream_error', shape });
    return;
  }
  // Streaming: the gateway sends its status, headers and first chunk with the first token,
  // so the first byte is the first token. Without streaming this is the whole answer's time.
  ttft.add(res.timings.waiting, tags);
  outputTokens.add(usage.completion_tokens, tags);
  if (usage.completion_tokens > 1) {
    tpot.add(res.timings.receiving / (usage.completion_tokens - 1), tags);
  }
}
