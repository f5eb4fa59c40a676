// The WebAssembly SIMD kernels (bilinear-wasm.ts, wasm/resample.ts) against the JS passes of
// bilinear.ts, which the Pillow goldens pin down (bilinear.test.ts): equal bytes everywhere.
// The .wasm is built by `npm run build` (`npm test` runs it first).
import { describe, expect, it } from 'vitest';
import {
  type CropResize,
  type PassOrder,
  bilinearBackend,
  resizeBilinear,
  resizeBilinearChw,
  resizeBilinearJs,
  resizeCropsChw,
} from './bilinear.js';
import { resizeWasm, wasmKernelStatus } from './bilinear-wasm.js';
import { type RgbImage, toChw } from './rgb-image.js';
import { cropImage } from './split.js';

const ORDERS: PassOrder[] = ['pillow12', 'pillow13'];

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** Random pixels, with runs of 0 and 255 so that clipping at both ends is exercised. */
function randomImage(height: number, width: number, rand: () => number): RgbImage {
  const data = new Uint8Array(height * width * 3);
  for (let i = 0; i < data.length; i++) {
    const r = rand();
    data[i] = r < 0.1 ? 0 : r < 0.2 ? 255 : Math.floor(rand() * 256);
  }
  return { height, width, data };
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(
    Buffer.from(b.buffer, b.byteOffset, b.length),
  );
}

/** Checks HWC and CHW results of both pass orders against the JS implementation. */
function expectSameAsJs(img: RgbImage, height: number, width: number): void {
  for (const passOrder of ORDERS) {
    const label = `${img.width}x${img.height} -> ${width}x${height} ${passOrder}`;
    const expected = resizeBilinearJs(img, height, width, { passOrder });
    const actual = resizeBilinear(img, height, width, { passOrder });
    expect([actual.height, actual.width], label).toEqual([height, width]);
    expect(same(actual.data, expected.data), label).toBe(true);
    const chw = resizeBilinearChw(img, height, width, { passOrder });
    expect(same(chw, toChw(expected)), `${label} CHW`).toBe(true);
  }
}

describe('WebAssembly bilinear kernels', () => {
  it('are built and in use (run `npm run build` first)', () => {
    const status = wasmKernelStatus();
    expect(status.error, 'the .wasm did not load').toBeUndefined();
    expect(status.available).toBe(true);
    expect(bilinearBackend()).toBe('wasm');
  });

  it('match JS on the sizes the pipeline sees', () => {
    const rand = lcg(7);
    const cases: [number, number, number, number][] = [
      [1600, 2400, 653, 980], // split original
      [800, 1200, 653, 980], // split quarter
      [400, 300, 504, 378], // upscale
      [3000, 1000, 980, 326], // tall: vertical first in Pillow 13
      [1001, 999, 980, 978],
    ];
    for (const [h, w, oh, ow] of cases) expectSameAsJs(randomImage(h, w, rand), oh, ow);
  });

  it('match JS on huge downscale factors', () => {
    const rand = lcg(11);
    expectSameAsJs(randomImage(3000, 40, rand), 378, 40);
    expectSameAsJs(randomImage(40, 3000, rand), 40, 378);
    expectSameAsJs(randomImage(1200, 3000, rand), 378, 378);
    expectSameAsJs(randomImage(17, 2000, rand), 1, 3);
    expectSameAsJs(randomImage(2000, 17, rand), 2, 1);
  });

  it('match JS on tiny sides, one-axis resizes and upscales', () => {
    const rand = lcg(12);
    const sides = [1, 2, 3, 5, 15, 16, 17, 33];
    for (const h of sides) {
      for (const w of sides) {
        const img = randomImage(h, w, rand);
        for (const [oh, ow] of [
          [h, 1 + Math.floor(rand() * 40)], // width only
          [1 + Math.floor(rand() * 40), w], // height only
          [1 + Math.floor(rand() * 3), 1 + Math.floor(rand() * 3)],
          [378, 378],
          [h + 16, Math.max(1, w - 1)],
        ] as const) {
          expectSameAsJs(img, oh, ow);
        }
      }
    }
  });

  it('match JS on random sizes', () => {
    const rand = lcg(2025);
    for (let i = 0; i < 300; i++) {
      const big = i % 10 === 0;
      const h = 1 + Math.floor(rand() * (big ? 400 : 80));
      const w = 1 + Math.floor(rand() * (big ? 400 : 80));
      const pick = (side: number) => {
        const r = rand();
        if (r < 0.15) return side; // that axis unchanged
        if (r < 0.45) return Math.max(1, Math.floor(side / (1 + rand() * 12))); // downscale
        return 1 + Math.floor(rand() * (big ? 500 : 120)); // anything, often upscale
      };
      expectSameAsJs(randomImage(h, w, rand), pick(h), pick(w));
    }
  });

  it('resize crops in place like crop-then-resize', () => {
    const rand = lcg(99);
    for (let i = 0; i < 40; i++) {
      const img = randomImage(1 + Math.floor(rand() * 120), 1 + Math.floor(rand() * 120), rand);
      const crops: CropResize[] = [];
      for (let j = 0; j < 6; j++) {
        const ys = [Math.floor(rand() * (img.height + 1)), Math.floor(rand() * (img.height + 1))];
        const xs = [Math.floor(rand() * (img.width + 1)), Math.floor(rand() * (img.width + 1))];
        const [y0, y1] = ys.sort((a, b) => a - b) as [number, number];
        const [x0, x1] = xs.sort((a, b) => a - b) as [number, number];
        const same = j === 5 && y1 > y0 && x1 > x0; // one crop not resized at all
        const height = same ? y1 - y0 : 1 + Math.floor(rand() * 90);
        const width = same ? x1 - x0 : 1 + Math.floor(rand() * 90);
        crops.push({ y0, y1, x0, x1, height, width });
      }
      for (const passOrder of ORDERS) {
        const outputs = resizeCropsChw(img, crops, { passOrder });
        crops.forEach((c, j) => {
          const piece = cropImage(img, c.y0, c.y1, c.x0, c.x1);
          const expected = toChw(resizeBilinearJs(piece, c.height, c.width, { passOrder }));
          expect(same(outputs[j]!, expected), `${JSON.stringify(c)} ${passOrder}`).toBe(true);
        });
      }
    }
  });

  it('copy a crop that keeps its size', () => {
    const img = randomImage(30, 40, lcg(3));
    const job = { y0: 3, y1: 20, x0: 5, x1: 36, height: 17, width: 31, verticalFirst: false };
    const piece = cropImage(img, 3, 20, 5, 36);
    expect(resizeWasm(img, [job], false)).toEqual([piece.data]);
    expect(resizeWasm(img, [job], true)).toEqual([toChw(piece)]);
  });

  it('returns arrays of their own, not views of wasm memory', () => {
    const rand = lcg(5);
    const a = randomImage(50, 60, rand);
    const first = resizeBilinear(a, 20, 30);
    const copy = first.data.slice();
    resizeBilinear(randomImage(500, 600, rand), 20, 30); // grows and reuses the memory
    expect(same(first.data, copy)).toBe(true);
    expect(first.data.byteOffset).toBe(0);
    expect(first.data.buffer.byteLength).toBe(20 * 30 * 3);
  });

  it('let go of memory grown for a huge image, and carry on', () => {
    // 66 MB of input: more than the memory a thread keeps (RETAIN_BYTES).
    const big = { height: 4700, width: 4700, data: new Uint8Array(4700 * 4700 * 3) };
    for (let i = 0; i < big.data.length; i++) big.data[i] = (i * 2654435761) >>> 24;
    expect(same(resizeBilinearChw(big, 653, 980), toChw(resizeBilinearJs(big, 653, 980)))).toBe(
      true,
    );
    expectSameAsJs(randomImage(70, 50, lcg(8)), 33, 90);
  });

  it('leaves the input alone and accepts a view into a larger buffer', () => {
    const rand = lcg(6);
    const backing = new Uint8Array(7 + 40 * 30 * 3 + 5);
    for (let i = 0; i < backing.length; i++) backing[i] = Math.floor(rand() * 256);
    const img = { height: 40, width: 30, data: backing.subarray(7, 7 + 40 * 30 * 3) };
    const before = backing.slice();
    expectSameAsJs(img, 17, 45);
    expect(same(backing, before)).toBe(true);
  });

  it('check crops and sizes', () => {
    const img = randomImage(10, 10, lcg(1));
    const crop = { y0: 0, y1: 10, x0: 0, x1: 10, height: 5, width: 5 };
    expect(() => resizeCropsChw(img, [{ ...crop, y1: 11 }])).toThrow(RangeError);
    expect(() => resizeCropsChw(img, [{ ...crop, x0: 6, x1: 5 }])).toThrow(RangeError);
    expect(() => resizeCropsChw(img, [{ ...crop, width: 0 }])).toThrow(RangeError);
    expect(() => resizeBilinearChw(img, 2.5, 3)).toThrow(RangeError);
  });
});
