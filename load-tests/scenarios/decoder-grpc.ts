// decoder-grpc: the decoder's own first-token latency, over gRPC (k6/net/grpc), without the
// gateway: DECODER=host:port, prompt tokens from PROMPT_TOKENS (default 256).
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import type { Options } from 'k6/options';
import { summaryHandler } from '../lib/scenario.ts';

const client = new grpc.Client();
client.load(['../../proto'], 'loupe/v1/decoder.proto');
const firstToken = new Trend('loupe_decoder_first_token', true);
const promptTokens = Number(__ENV.PROMPT_TOKENS ?? 256);

export const options: Options = {
  vus: Number(__ENV.VUS ?? 4),
  duration: __ENV.DURATION ?? '1m',
  thresholds: { loupe_decoder_first_token: ['p(95)<2000'], checks: ['rate>0.99'] },
};

export const handleSummary = summaryHandler('decoder-grpc');

export default function (): void {
  if (__ITER === 0) client.connect(__ENV.DECODER ?? '127.0.0.1:50053', { plaintext: true });
  const started = Date.now();
  const stream = new grpc.Stream(client, 'loupe.v1.Decoder/Generate');
  let first = true;
  stream.on('data', () => {
    if (first) {
      first = false;
      firstToken.add(Date.now() - started);
    }
  });
  stream.on('error', (e) => check(e, { 'no stream error': () => false }));
  stream.write({
    prompt_token_ids: [1, ...Array.from({ length: promptTokens - 1 }, (_, i) => 3 + (i % 400))],
    max_new_tokens: 8,
    sampling: { temperature: 0 },
  });
  stream.end();
}
