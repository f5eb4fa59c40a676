// image-heavy: several large images per request, split on, never cached: the encoder's worst
// case (5 sub-images per image).
import type { Options } from 'k6/options';
import { chat } from '../lib/chat.ts';
import { DURATION, RATE } from '../lib/config.ts';
import { chatBody } from '../lib/payloads.ts';

export const options: Options = {
  scenarios: {
    images: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.max(4, RATE * 8),
      maxVUs: Math.max(16, RATE * 40),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    loupe_errors: ['count<1'],
    loupe_ttft: ['p(95)<20000'],
  },
};

export default function (): void {
  chat(chatBody({ images: 3, size: 'large', cached: false, split: true, maxTokens: 16 }));
}
