// k6 side of the request builders (lib/profiles.ts holds the shared, runtime-neutral part):
// images read in the init context, cached (the same bytes each time, so the encoder's cache
// answers) or uncached (a few random trailing bytes make the image new to the cache without
// changing the picture).
import encoding from 'k6/encoding';
import { MAX_TOKENS, MODEL, STREAM } from './config.ts';
import { chatRequest, pick, shapeTag, type Mix } from './profiles.ts';

const SMALL = open('../../test/fixtures/images/webp-lossy-640x480.webp', 'b');
const LARGE = open('../../test/fixtures/images/jpeg-2400x1600.jpg', 'b');

function imageUrl(size: 'small' | 'large', cached: boolean): string {
  const bytes = new Uint8Array(size === 'small' ? SMALL : LARGE);
  const mime = size === 'small' ? 'image/webp' : 'image/jpeg';
  if (cached) return `data:${mime};base64,${encoding.b64encode(bytes.buffer)}`;
  const unique = new Uint8Array(bytes.length + 8);
  unique.set(bytes);
  for (let i = 0; i < 8; i++) unique[bytes.length + i] = Math.floor(Math.random() * 256);
  return `data:${mime};base64,${encoding.b64encode(unique.buffer)}`;
}

/** One request of `mix`, drawn at random by share: its body and its shape's tag. */
export function chatRequestK6(
  mix: readonly Mix[],
  settings: { model: string; maxTokens: number; stream: boolean },
): { body: string; shape: string } {
  const m = pick(mix, Math.random());
  return { body: chatRequest(m, imageUrl, settings), shape: shapeTag(m) };
}

/** The same, with the run's settings (`MODEL`, `MAX_TOKENS`, `STREAM`). */
export function chatBody(mix: readonly Mix[]): { body: string; shape: string } {
  return chatRequestK6(mix, { model: MODEL, maxTokens: MAX_TOKENS, stream: STREAM });
}
