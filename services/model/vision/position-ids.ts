// NaViT-style position ids of the vision embeddings (docs/model.md §2.4), computed on the host
// and fed to the vision graph: each row (column) of a sub-image's patch grid maps to a row
// (column) of the learned S×S position table by fractional position.

/**
 * Indices i whose bucket is one lower than ⌊i·70/n⌋ in the reference, because float32
 * rounding puts i/n just below a boundary (torch CPU arange; checked with torch 2.7.1,
 * test/fixtures/model/position_buckets.json, and docs/model.md §2.4's default row).
 */
const TIES_70: ReadonlyMap<number, ReadonlySet<number>> = new Map([
  [25, new Set([5, 10, 15, 20])],
  [49, new Set([7, 14, 35, 42])],
  [50, new Set([5, 10, 15, 20, 30, 40])],
  [55, new Set([11, 22, 33, 44])],
  [58, new Set([29])],
]);

/**
 * The bucket of each of `n` patch rows (or columns) in a table `perSide` wide:
 * `bucketize(arange(0, 1 - 1e-6, 1/n), arange(1/S, 1, 1/S), right=True)` as the reference
 * computes it (transformers 4.40-4.54).
 */
export function positionBuckets(n: number, perSide: number): Int32Array {
  if (!Number.isInteger(n) || n < 1)
    throw new RangeError(`patch count must be a positive integer, got ${n}`);
  const buckets = new Int32Array(n);
  if (perSide === 70) {
    const ties = TIES_70.get(n);
    for (let i = 0; i < n; i++) buckets[i] = Math.floor((i * 70) / n) - (ties?.has(i) ? 1 : 0);
    return buckets;
  }
  // Other table sizes (small test models): the scalar float32 path of torch's arange.
  const step = Math.fround(1 / n);
  const boundaries: number[] = [];
  for (let k = 0; ; k++) {
    const b = 1 / perSide + k * (1 / perSide);
    if (b >= 1) break;
    boundaries.push(Math.fround(b));
  }
  for (let i = 0; i < n; i++) {
    const x = Math.fround(i * step);
    let count = 0;
    while (count < boundaries.length && boundaries[count]! <= x) count++;
    buckets[i] = count;
  }
  return buckets;
}

/**
 * Position ids of a sub-image whose valid patch grid is `rows`×`cols` (⌊h/14⌋×⌊w/14⌋),
 * row-major, in a batch canvas of `canvasRows`×`canvasCols` patches: padded patches keep 0.
 */
export function visionPositionIds({
  rows,
  cols,
  canvasRows = rows,
  canvasCols = cols,
  perSide,
}: {
  rows: number;
  cols: number;
  canvasRows?: number;
  canvasCols?: number;
  perSide: number;
}): BigInt64Array {
  if (rows > canvasRows || cols > canvasCols) {
    throw new RangeError(
      `a ${rows}×${cols} patch grid does not fit a ${canvasRows}×${canvasCols} canvas`,
    );
  }
  const ids = new BigInt64Array(canvasRows * canvasCols);
  const bh = positionBuckets(rows, perSide);
  const bw = positionBuckets(cols, perSide);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) ids[r * canvasCols + c] = BigInt(bh[r]! * perSide + bw[c]!);
  }
  return ids;
}
