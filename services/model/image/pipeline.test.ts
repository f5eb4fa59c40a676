// Parity with the reference (transformers' Idefics2ImageProcessor after load_image) on the
// committed corpus: test/fixtures/preprocess/expected.json, made by
// test/fixtures/make_fixtures.py (see test/fixtures/README.md for the field definitions).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { PassOrder } from './bilinear.js';
import { decodeImage } from './decode.js';
import { preprocessImage, processGeometry } from './pipeline.js';
import { toPixelValues } from './pixel-values.js';
import { DEFAULT_IMAGE_PROCESSOR_CONFIG } from './processor-config.js';
import { resizeOutputSize } from './resize-rule.js';
import { toChw } from './rgb-image.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const FIXTURES = new URL('../../../test/fixtures/', import.meta.url);
const LIMITS = { maxBytes: 64 << 20, maxPixels: 40_000_000, maxFrames: 100 };

interface ExpectedSubImage {
  height: number;
  width: number;
  sha256: string;
  sum: number;
  sha256_pillow_le12?: string;
}

interface ExpectedRun {
  sub_images?: ExpectedSubImage[];
  pixel_values_shape?: number[];
  pixel_values_sha256?: string;
  pixel_values_sha256_pillow_le12?: string;
  pixel_attention_mask_shape?: number[];
  pixel_attention_mask_sha256?: string;
  error?: string;
  error_default_call?: string;
}

interface ExpectedImage {
  file: string;
  file_sha256: string;
  source: { format: string; height: number; width: number };
  decoded_rgb: { sha256: string; sum: number; channel_sums: number[] };
  notes?: string[];
  split_off: ExpectedRun;
  split_on: ExpectedRun;
}

const expected = JSON.parse(
  readFileSync(new URL('preprocess/expected.json', FIXTURES), 'utf8'),
) as { versions: { pillow: string }; images: ExpectedImage[] };

/** The goldens' Pillow decides the resampling pass order (Pillow 13 changed it). */
const passOrder: PassOrder =
  Number(expected.versions.pillow.split('.')[0]) >= 13 ? 'pillow13' : 'pillow12';

/**
 * Known, explained divergences (see the report in the commit): AVIF goes through libheif in
 * sharp but libavif in Pillow, whose YUV -> RGB chroma upsampling differs, so only sizes are
 * exact and sums agree closely.
 */
const APPROXIMATE_FORMATS = new Set(['avif']);

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const f32Bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const sum = (bytes: Uint8Array) => bytes.reduce((s, v) => s + v, 0);

function readFixture(entry: ExpectedImage): Uint8Array {
  const bytes = readFileSync(new URL(entry.file, FIXTURES));
  expect(sha256(bytes), `${entry.file} changed since the goldens were made`).toBe(
    entry.file_sha256,
  );
  return bytes;
}

const images = fixtureCases(
  'images of test/fixtures/preprocess/expected.json',
  expected.images.map((e) => [e.file, e] as const),
  57,
);

describe.each(images)('%s', (_, entry) => {
  const approximate = APPROXIMATE_FORMATS.has(entry.source.format);

  it('decodes like load_image (exif_transpose + convert("RGB"))', async () => {
    const { image, format } = await decodeImage(readFixture(entry), LIMITS);
    expect(format).toBe(entry.source.format);
    expect([image.height, image.width]).toEqual([entry.source.height, entry.source.width]);
    if (approximate) {
      expect(Math.abs(sum(image.data) / entry.decoded_rgb.sum - 1)).toBeLessThan(5e-3);
    } else {
      expect(sha256(image.data)).toBe(entry.decoded_rgb.sha256);
    }
  });

  for (const split of [false, true]) {
    const run = split ? entry.split_on : entry.split_off;
    const label = split ? 'split on' : 'split off';

    if (entry.notes !== undefined || run.sub_images === undefined || run.error !== undefined) {
      // Reference quirks (height 1 or 3 read as channels-first, 1x1 failing): the port does
      // the channels-last processing the reference means to do.
      it(`${label}: gives well-formed sub-images where the reference misbehaves`, async () => {
        const out = await preprocessImage(readFixture(entry), {
          config: DEFAULT_IMAGE_PROCESSOR_CONFIG,
          split,
          limits: LIMITS,
          passOrder,
        });
        expect(out.subImages).toHaveLength(split ? 5 : 1);
        const whole = out.subImages.at(-1)!;
        expect(whole).toMatchObject(
          resizeOutputSize(entry.source.height, entry.source.width, DEFAULT_IMAGE_PROCESSOR_CONFIG),
        );
      });
      continue;
    }

    it(`${label}: same sub-images, pixel_values and mask as the reference`, async () => {
      const out = await preprocessImage(readFixture(entry), {
        config: DEFAULT_IMAGE_PROCESSOR_CONFIG,
        split,
        limits: LIMITS,
        passOrder,
      });
      const subs = run.sub_images!;
      expect(out.split).toBe(split);
      expect(out.imageTokens).toBe(subs.length * 64);
      expect(out.source).toEqual(entry.source);
      expect(out.subImages.map((s) => [s.height, s.width])).toEqual(
        subs.map((s) => [s.height, s.width]),
      );
      if (approximate) {
        for (const [i, s] of out.subImages.entries()) {
          expect(Math.abs(sum(s.pixels) / subs[i]!.sum - 1), `sub-image ${i}`).toBeLessThan(5e-3);
        }
        return;
      }
      expect(out.subImages.map((s) => sha256(s.pixels))).toEqual(subs.map((s) => s.sha256));

      const pv = toPixelValues(out.subImages, DEFAULT_IMAGE_PROCESSOR_CONFIG);
      expect([pv.count, 3, pv.height, pv.width]).toEqual(run.pixel_values_shape);
      expect([pv.count, pv.height, pv.width]).toEqual(run.pixel_attention_mask_shape);
      expect(sha256(f32Bytes(pv.pixelValues))).toBe(run.pixel_values_sha256);
      expect(sha256(pv.pixelAttentionMask)).toBe(run.pixel_attention_mask_sha256);

      // Where Pillow <= 12 would differ (pass order), the other order gives its hashes.
      if (subs.some((s) => s.sha256_pillow_le12 !== undefined)) {
        const other = await preprocessImage(readFixture(entry), {
          config: DEFAULT_IMAGE_PROCESSOR_CONFIG,
          split,
          limits: LIMITS,
          passOrder: 'pillow12',
        });
        expect(other.subImages.map((s) => sha256(s.pixels))).toEqual(
          subs.map((s) => s.sha256_pillow_le12 ?? s.sha256),
        );
        if (run.pixel_values_sha256_pillow_le12 !== undefined) {
          const pv12 = toPixelValues(other.subImages, DEFAULT_IMAGE_PROCESSOR_CONFIG);
          expect(sha256(f32Bytes(pv12.pixelValues))).toBe(run.pixel_values_sha256_pillow_le12);
        }
      }
    });
  }
});

// preprocessImage resizes the pieces of the split in place, straight to CHW; that must be
// exactly processGeometry (splitImage, then resizeBilinear of each piece) + toChw, including
// where the goldens only check shapes (1-pixel sides give empty crops).
describe('preprocessImage = processGeometry + toChw', () => {
  it.each(images)('%s', async (_, entry) => {
    const bytes = readFixture(entry);
    const { image } = await decodeImage(bytes, LIMITS);
    for (const split of [false, true]) {
      // Split on covers the unsplit resize too (the last piece), so one order is enough off.
      for (const order of split ? (['pillow12', 'pillow13'] as const) : (['pillow13'] as const)) {
        const options = { config: DEFAULT_IMAGE_PROCESSOR_CONFIG, split, passOrder: order };
        const out = await preprocessImage(bytes, { ...options, limits: LIMITS });
        const pieces = processGeometry(image, options);
        expect(out.subImages.map((s) => [s.height, s.width])).toEqual(
          pieces.map((p) => [p.height, p.width]),
        );
        expect(out.subImages.map((s) => sha256(s.pixels))).toEqual(
          pieces.map((p) => sha256(toChw(p))),
        );
      }
    }
  });
});
