// soak: RATE requests/s for an hour (DURATION overrides): memory, cache and slot leaks show
// as latency creeping up or errors late in the run.
import type { Options } from 'k6/options';
import { chat, THRESHOLDS } from '../lib/chat.ts';
import { RATE } from '../lib/config.ts';
import { chatBody } from '../lib/payloads.ts';

export const options: Options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION ?? '1h',
      preAllocatedVUs: Math.max(4, RATE * 4),
      maxVUs: Math.max(16, RATE * 20),
    },
  },
  thresholds: THRESHOLDS,
};

export default function (): void {
  const r = Math.random();
  chat(r < 0.3 ? chatBody() : chatBody({ images: r < 0.8 ? 1 : 2, cached: r < 0.6 }));
}
