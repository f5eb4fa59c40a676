import { describe, expect, it } from 'vitest';
import { bfloat16ToFloat32, float16ToFloat32, float32ToFloat16 } from './half.js';

describe('half-precision conversions', () => {
  // Bit patterns as numpy's float16 gives them.
  it.each([
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [0.1, 0x2e66],
    [1 / 3, 0x3555],
    [65504, 0x7bff],
    [65519, 0x7bff],
    [65520, 0x7c00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000], // a tie: rounds to even (0)
    [3 * 2 ** -25, 0x0002], // a tie: rounds to even (2)
    [2 ** -14, 0x0400],
    [6.1e-5, 0x03ff],
    [1 + 2 ** -11, 0x3c00], // tie between 1 and 1 + 2^-10: even
    [1 + 3 * 2 ** -11, 0x3c02], // tie: even
    [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie
    [2047.9, 0x6800], // rounds up into the next binade
  ])('float32ToFloat16(%d) = %i', (value, bits) => {
    expect(float32ToFloat16(value)).toBe(bits);
  });

  it('keeps NaN a NaN', () => {
    expect(Number.isNaN(float16ToFloat32(float32ToFloat16(NaN)))).toBe(true);
  });

  it('round-trips every float16 value exactly', () => {
    const wrong: number[] = [];
    for (let bits = 0; bits < 0x10000; bits++) {
      const value = float16ToFloat32(bits);
      if (!Number.isNaN(value) && float32ToFloat16(value) !== bits) wrong.push(bits);
    }
    expect(wrong).toEqual([]);
  });

  it('widens bfloat16 exactly', () => {
    expect(bfloat16ToFloat32(0x3f80)).toBe(1);
    expect(bfloat16ToFloat32(0xc040)).toBe(-3);
    expect(bfloat16ToFloat32(0x3eab)).toBe(0.333984375);
  });
});
