// spike: a sudden burst of 10 × RATE requests/s for 30 s between quiet periods; the
// deployment must refuse clearly (429) or absorb it, and recover.
import type { Options } from 'k6/options';
import { chat } from '../lib/chat.ts';
import { RATE } from '../lib/config.ts';
import { chatBody } from '../lib/payloads.ts';

export const options: Options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: RATE,
      timeUnit: '1s',
      preAllocatedVUs: 16,
      maxVUs: Math.max(64, RATE * 100),
      stages: [
        { target: RATE, duration: '30s' },
        { target: RATE * 10, duration: '5s' },
        { target: RATE * 10, duration: '30s' },
        { target: RATE, duration: '5s' },
        { target: RATE, duration: '1m' },
      ],
    },
  },
  // During the spike 429s are the expected answer; what counts is the recovery.
  thresholds: { 'http_req_failed{expected_response:true}': ['rate<0.01'] },
};

export default function (): void {
  chat(chatBody({ images: 1 }));
}
