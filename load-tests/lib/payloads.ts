// Request bodies: text only, or with 1..N images, small or large, cached (the same bytes every
// time, so the encoder's cache answers) or uncached (a few random trailing bytes make every
// image new to the cache without changing the picture).
import encoding from 'k6/encoding';
import { MAX_TOKENS, MODEL, STREAM } from './config.ts';

// Read in the init context, relative to this file.
const SMALL = open('../../test/fixtures/images/webp-lossy-640x480.webp', 'b');
const LARGE = open('../../test/fixtures/images/jpeg-2400x1600.jpg', 'b');

export type ImageSize = 'small' | 'large';

function imageUrl(size: ImageSize, cached: boolean): string {
  const bytes = new Uint8Array(size === 'small' ? SMALL : LARGE);
  const mime = size === 'small' ? 'image/webp' : 'image/jpeg';
  if (cached) return `data:${mime};base64,${encoding.b64encode(bytes.buffer)}`;
  const unique = new Uint8Array(bytes.length + 8);
  unique.set(bytes);
  for (let i = 0; i < 8; i++) unique[bytes.length + i] = Math.floor(Math.random() * 256);
  return `data:${mime};base64,${encoding.b64encode(unique.buffer)}`;
}

export interface PayloadOptions {
  images?: number;
  size?: ImageSize;
  cached?: boolean;
  split?: boolean;
  maxTokens?: number;
}

/** An OpenAI chat-completions body. */
export function chatBody({
  images = 0,
  size = 'small',
  cached = true,
  split,
  maxTokens = MAX_TOKENS,
}: PayloadOptions = {}): string {
  const content: unknown[] = [];
  for (let i = 0; i < images; i++) {
    content.push({
      type: 'image_url',
      image_url: { url: imageUrl(size, cached), ...(split === undefined ? {} : { split }) },
    });
  }
  content.push({
    type: 'text',
    text: images > 0 ? 'Describe the pictures.' : 'Write a short poem about the sea.',
  });
  return JSON.stringify({
    model: MODEL,
    max_tokens: maxTokens,
    temperature: 0,
    stream: STREAM,
    ...(STREAM ? { stream_options: { include_usage: true } } : {}),
    messages: [{ role: 'user', content }],
  });
}
