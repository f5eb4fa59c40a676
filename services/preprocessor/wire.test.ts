import { describe, expect, it } from 'vitest';
import { PreprocessResponse } from '../../proto/gen/loupe/v1/preprocessor.js';
import { decodePreprocessResponse } from '../runtime/index.js';
import { encodePreprocessResponse } from './wire.js';

const pixels = (n: number, seed: number) => {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 255;
  return out;
};

describe('encodePreprocessResponse', () => {
  const cases: Array<[string, PreprocessResponse]> = [
    ['empty', PreprocessResponse.fromPartial({})],
    [
      'split, five sub-images, hash',
      PreprocessResponse.fromPartial({
        subImages: [
          [378, 490],
          [378, 490],
          [653, 980],
          [1, 1],
          [980, 980],
        ].map(([height, width], i) => ({
          height,
          width,
          pixels: { dtype: 1, shape: [3, height!, width!], data: pixels(3 * height! * width!, i) },
        })),
        split: true,
        subImagesHash: pixels(32, 9),
      }),
    ],
    [
      'zero fields left out, large shape values',
      PreprocessResponse.fromPartial({
        subImages: [
          {
            height: 0,
            width: 5,
            pixels: { dtype: 0, shape: [0, 2 ** 40, 300], data: Buffer.alloc(0) },
          },
        ],
      }),
    ],
  ];

  it.each(cases)('writes the same bytes as the generated encoder: %s', (_name, message) => {
    const expected = Buffer.from(PreprocessResponse.encode(message).finish());
    const actual = encodePreprocessResponse(message);
    expect(actual.equals(expected)).toBe(true);
    // Same bytes as the generated encoder already proves it; decoding as the gateway does (the
    // tensor codec) checks the round trip without a deep comparison of megabytes element by
    // element.
    const decoded = decodePreprocessResponse(actual);
    expect(decoded.subImages.length).toBe(message.subImages.length);
    decoded.subImages.forEach((sub, i) => {
      const original = message.subImages[i]!;
      expect([sub.height, sub.width, sub.pixels?.shape]).toEqual([
        original.height,
        original.width,
        original.pixels?.shape,
      ]);
      expect(
        Buffer.compare(
          sub.pixels?.data ?? Buffer.alloc(0),
          original.pixels?.data ?? Buffer.alloc(0),
        ),
      ).toBe(0);
    });
    expect({ ...decoded, subImages: [] }).toEqual({ ...message, subImages: [] });
  });
});
