import { describe, expect, it } from 'vitest';
import type { RgbImage } from './rgb-image.js';
import { splitImage } from './split.js';

/** Pixel (y, x) holds (y, x, 7) so crops can be checked by value. */
function coordinateImage(height: number, width: number): RgbImage {
  const data = new Uint8Array(height * width * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) data.set([y, x, 7], (y * width + x) * 3);
  }
  return { height, width, data };
}

function pixel(img: RgbImage, y: number, x: number): number[] {
  const i = (y * img.width + x) * 3;
  return Array.from(img.data.subarray(i, i + 3));
}

describe('splitImage', () => {
  it('returns TL, TR, BL, BR, then the original, split at floor(dim / 2)', () => {
    const img = coordinateImage(7, 9); // midH = 3, midW = 4
    const parts = splitImage(img);
    expect(parts.map((p) => [p.height, p.width])).toEqual([
      [3, 4],
      [3, 5],
      [4, 4],
      [4, 5],
      [7, 9],
    ]);
    expect(pixel(parts[0]!, 0, 0)).toEqual([0, 0, 7]);
    expect(pixel(parts[1]!, 0, 0)).toEqual([0, 4, 7]);
    expect(pixel(parts[2]!, 0, 0)).toEqual([3, 0, 7]);
    expect(pixel(parts[3]!, 0, 0)).toEqual([3, 4, 7]);
    expect(pixel(parts[3]!, 3, 4)).toEqual([6, 8, 7]);
    expect(parts[4]).toBe(img);
  });

  it('copies each crop row by row', () => {
    const img = coordinateImage(10, 6);
    const [tl, tr, bl, br] = splitImage(img);
    for (const [part, y0, x0] of [
      [tl!, 0, 0],
      [tr!, 0, 3],
      [bl!, 5, 0],
      [br!, 5, 3],
    ] as const) {
      for (let y = 0; y < part.height; y++) {
        for (let x = 0; x < part.width; x++) expect(pixel(part, y, x)).toEqual([y0 + y, x0 + x, 7]);
      }
    }
  });

  it('gives empty crops for a 1-pixel-wide image, as the reference does', () => {
    const parts = splitImage(coordinateImage(50, 1));
    expect(parts.map((p) => [p.height, p.width])).toEqual([
      [25, 0],
      [25, 1],
      [25, 0],
      [25, 1],
      [50, 1],
    ]);
  });
});
