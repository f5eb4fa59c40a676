import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  type PassOrder,
  resizeBilinear,
  resizeBilinearChw,
  resizeBilinearJs,
  verticalPassFirst,
} from './bilinear.js';
import { bilinearCoefficients } from './bilinear-coefficients.js';
import { decodeImage } from './decode.js';
import { type RgbImage, toChw } from './rgb-image.js';

const FIXTURES = new URL('../../../test/fixtures/resize/', import.meta.url);
const EXPECTED = new URL('../../../test/fixtures/preprocess/expected.json', import.meta.url);
const LIMITS = { maxBytes: 1 << 26, maxPixels: 1 << 26, maxFrames: 1 };

interface ResizeCase {
  input: string;
  in_height: number;
  in_width: number;
  out_height: number;
  out_width: number;
  sha256: string;
  /** What a Pillow <= 12 gives, where it differs from `sha256`. */
  sha256_pillow_le12?: string;
  pass_order: string;
}

/** The pass order of the Pillow that made the goldens (recorded by the same script run). */
function fixturePassOrder(): PassOrder {
  const { versions } = JSON.parse(readFileSync(EXPECTED, 'utf8')) as {
    versions: { pillow: string };
  };
  return Number(versions.pillow.split('.')[0]) >= 13 ? 'pillow13' : 'pillow12';
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

function randomImage(height: number, width: number, rand: () => number): RgbImage {
  const data = new Uint8Array(height * width * 3);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(rand() * 256);
  return { height, width, data };
}

/**
 * Pillow's passes written the plain way (one output value at a time, one channel at a time),
 * to check the optimized loops against.
 */
function naivePass(img: RgbImage, outSize: number, horizontal: boolean): RgbImage {
  const inSize = horizontal ? img.width : img.height;
  const { start, count, kSize, weights } = bilinearCoefficients(inSize, outSize);
  const height = horizontal ? img.height : outSize;
  const width = horizontal ? outSize : img.width;
  const data = new Uint8Array(height * width * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        const i = horizontal ? x : y;
        let acc = 1 << 21;
        for (let t = 0; t < count[i]!; t++) {
          const sy = horizontal ? y : start[i]! + t;
          const sx = horizontal ? start[i]! + t : x;
          acc += img.data[(sy * img.width + sx) * 3 + c]! * weights[i * kSize + t]!;
        }
        data[(y * width + x) * 3 + c] = Math.min(255, Math.max(0, acc >> 22));
      }
    }
  }
  return { height, width, data };
}

function naiveResize(img: RgbImage, height: number, width: number, passOrder: PassOrder): RgbImage {
  const h = width !== img.width;
  const v = height !== img.height;
  if (
    h &&
    v &&
    passOrder === 'pillow13' &&
    verticalPassFirst(img.height, img.width, height, width)
  ) {
    return naivePass(naivePass(img, height, false), width, true);
  }
  let out = img;
  if (h) out = naivePass(out, width, true);
  if (v) out = naivePass(out, height, false);
  return out;
}

describe('bilinearCoefficients', () => {
  it('normalizes each output to about 2^22 in fixed point', () => {
    for (const [inSize, outSize] of [
      [2400, 980],
      [37, 378],
      [1000, 1],
      [7, 3],
    ] as const) {
      const { count, kSize, weights } = bilinearCoefficients(inSize, outSize);
      for (let i = 0; i < outSize; i++) {
        let sum = 0;
        for (let t = 0; t < count[i]!; t++) sum += weights[i * kSize + t]!;
        expect(Math.abs(sum - 2 ** 22)).toBeLessThanOrEqual(count[i]!);
      }
    }
  });
});

describe('verticalPassFirst (Pillow 13)', () => {
  it('goes vertical first only when the height shrinks by more than twice the width', () => {
    expect(verticalPassFirst(300, 400, 280, 390)).toBe(false); // 20 == 2 * 10
    expect(verticalPassFirst(300, 400, 279, 390)).toBe(true); // 21 > 2 * 10
    expect(verticalPassFirst(2400, 1080, 980, 441)).toBe(true);
    expect(verticalPassFirst(1600, 2400, 653, 980)).toBe(false);
    expect(verticalPassFirst(200, 300, 378, 378)).toBe(false);
    expect(verticalPassFirst(300, 50, 200, 100)).toBe(true); // width grows
  });
});

describe('resizeBilinear', () => {
  it('returns a copy when the size does not change', () => {
    const img = randomImage(5, 4, lcg(1));
    const out = resizeBilinear(img, 5, 4);
    expect(out.data).toEqual(img.data);
    expect(out.data).not.toBe(img.data);
  });

  it('turns an empty image into a black one, as PIL does', () => {
    const out = resizeBilinear({ height: 25, width: 0, data: new Uint8Array(0) }, 378, 378);
    expect(out.data.length).toBe(378 * 378 * 3);
    expect(out.data.every((v) => v === 0)).toBe(true);
  });

  it('matches a plain implementation on random sizes, both pass orders', () => {
    const rand = lcg(2024);
    for (let i = 0; i < 150; i++) {
      const h = 1 + Math.floor(rand() * 60);
      const w = 1 + Math.floor(rand() * 60);
      // Mix of strong downscales (long filters), mild ones and upscales.
      const oh =
        i % 3 === 0 ? Math.max(1, Math.floor(h / (1 + rand() * 9))) : 1 + Math.floor(rand() * 90);
      const ow = i % 5 === 0 ? w : 1 + Math.floor(rand() * 90);
      const img = randomImage(h, w, rand);
      for (const passOrder of ['pillow13', 'pillow12'] as const) {
        const expected = naiveResize(img, oh, ow, passOrder);
        for (const resize of [resizeBilinear, resizeBilinearJs]) {
          const actual = resize(img, oh, ow, { passOrder });
          expect([actual.height, actual.width]).toEqual([oh, ow]);
          const same = Buffer.from(actual.data).equals(Buffer.from(expected.data));
          expect(same, `${w}x${h} -> ${ow}x${oh} ${passOrder} ${resize.name}`).toBe(true);
        }
      }
    }
  });

  describe('parity with Pillow (test/fixtures/resize/cases.json)', async () => {
    const cases = JSON.parse(readFileSync(new URL('cases.json', FIXTURES), 'utf8')) as ResizeCase[];
    const passOrder = fixturePassOrder();
    const inputs = new Map<string, RgbImage>();
    for (const name of new Set(cases.map((c) => c.input))) {
      const { image } = await decodeImage(readFileSync(new URL(name, FIXTURES)), LIMITS);
      inputs.set(name, image);
    }
    it.each(
      cases.map(
        (c) => [`${c.input} -> ${c.out_width}x${c.out_height} (${c.pass_order})`, c] as const,
      ),
    )('%s', (_, c) => {
      const img = inputs.get(c.input)!;
      expect([img.height, img.width]).toEqual([c.in_height, c.in_width]);
      const hash = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
      // The WebAssembly kernels (HWC and CHW) and the JS fallback.
      const shas = (order: PassOrder) => {
        const options = { passOrder: order };
        return [
          hash(toChw(resizeBilinear(img, c.out_height, c.out_width, options))),
          hash(resizeBilinearChw(img, c.out_height, c.out_width, options)),
          hash(toChw(resizeBilinearJs(img, c.out_height, c.out_width, options))),
        ];
      };
      expect(shas(passOrder)).toEqual(Array(3).fill(c.sha256));
      if (c.sha256_pillow_le12 !== undefined) {
        expect(shas('pillow12')).toEqual(Array(3).fill(c.sha256_pillow_le12));
      }
    });
  });
});
