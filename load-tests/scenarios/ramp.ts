// ramp: arrival rate rising in steps from 1 to 4 × RATE requests/s, to find the knee where
// latency turns up (read loupe_ttft over time). Thresholds are loose: this run explores.
import type { Options } from 'k6/options';
import { chat } from '../lib/chat.ts';
import { RATE } from '../lib/config.ts';
import { chatBody } from '../lib/payloads.ts';

export const options: Options = {
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: 1,
      timeUnit: '1s',
      preAllocatedVUs: 8,
      maxVUs: Math.max(32, RATE * 40),
      stages: [
        { target: RATE, duration: '1m' },
        { target: RATE * 2, duration: '1m' },
        { target: RATE * 3, duration: '1m' },
        { target: RATE * 4, duration: '1m' },
      ],
    },
  },
  thresholds: { http_req_failed: ['rate<0.05'] },
};

export default function (): void {
  chat(chatBody({ images: 1, cached: false }));
}
