// smoke: one virtual user, a few requests of each kind; run it first against a new deployment.
import type { Options } from 'k6/options';
import { chat, THRESHOLDS } from '../lib/chat.ts';
import { chatBody } from '../lib/payloads.ts';

export const options: Options = {
  vus: 1,
  iterations: 3,
  thresholds: THRESHOLDS,
};

export default function (): void {
  chat(chatBody());
  chat(chatBody({ images: 1 }));
}
