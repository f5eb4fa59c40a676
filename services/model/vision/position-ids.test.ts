import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { positionBuckets, visionPositionIds } from './position-ids.js';

const reference = JSON.parse(
  readFileSync(
    new URL('../../../test/fixtures/model/position_buckets.json', import.meta.url),
    'utf8',
  ),
) as { buckets: Record<string, number[]> };

describe('positionBuckets', () => {
  it('equals the reference for every side length 1..70 of the 70×70 table', () => {
    for (let n = 1; n <= 70; n++)
      expect([...positionBuckets(n, 70)], `n=${n}`).toEqual(reference.buckets[n]);
  });

  it('matches docs/model.md Appendix A and the worked examples', () => {
    expect([...positionBuckets(70, 70)]).toEqual(Array.from({ length: 70 }, (_, i) => i));
    expect([...positionBuckets(46, 70)].slice(0, 8)).toEqual([0, 1, 3, 4, 6, 7, 9, 10]);
    expect([...positionBuckets(27, 70)]).toEqual([
      0, 2, 5, 7, 10, 12, 15, 18, 20, 23, 25, 28, 31, 33, 36, 38, 41, 44, 46, 49, 51, 54, 57, 59,
      62, 64, 67,
    ]);
  });

  it('puts everything in bucket 0 of a 1×1 table (the reference unit-test model)', () => {
    expect([...positionBuckets(1, 1)]).toEqual([0]);
  });
});

describe('visionPositionIds', () => {
  it('fills the valid rectangle row-major and leaves padding at 0', () => {
    const ids = visionPositionIds({ rows: 2, cols: 3, canvasRows: 3, canvasCols: 4, perSide: 70 });
    const b2 = positionBuckets(2, 70);
    const b3 = positionBuckets(3, 70);
    const expected = new Array(12).fill(0);
    for (let r = 0; r < 2; r++)
      for (let c = 0; c < 3; c++) expected[r * 4 + c] = b2[r]! * 70 + b3[c]!;
    expect([...ids].map(Number)).toEqual(expected);
  });

  it('is the identity for a full 980×980 sub-image', () => {
    const ids = visionPositionIds({ rows: 70, cols: 70, perSide: 70 });
    expect([...ids].map(Number)).toEqual(Array.from({ length: 4900 }, (_, i) => i));
  });
});
