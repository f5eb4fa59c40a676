// throughput: a constant arrival rate (RATE requests/s for DURATION), 1-image requests whose
// image is cached half the time: what the deployment sustains at that rate.
import type { Options } from 'k6/options';
import { chat, THRESHOLDS } from '../lib/chat.ts';
import { DURATION, RATE } from '../lib/config.ts';
import { chatBody } from '../lib/payloads.ts';

export const options: Options = {
  scenarios: {
    throughput: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.max(4, RATE * 4),
      maxVUs: Math.max(16, RATE * 20),
    },
  },
  thresholds: THRESHOLDS,
};

export default function (): void {
  chat(chatBody({ images: 1, cached: Math.random() < 0.5 }));
}
