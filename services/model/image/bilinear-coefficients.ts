/** Fixed-point bits of the coefficients, as Pillow's Resample.c: 32 - 8 - 2. */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;

/**
 * The taps of one axis, Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`:
 *
 * ```
 * output index i reads input [start[i], start[i] + count[i]) with weights
 * weights[i * kSize + t], t < count[i]   (fixed point, 2^22 = 1.0)
 * ```
 */
export interface AxisCoefficients {
  /** First input index of each output index. */
  start: Int32Array;
  /** Number of taps of each output index. */
  count: Int32Array;
  /** Row stride of `weights`: the most taps any output index may have. */
  kSize: number;
  weights: Int32Array;
}

function bilinearFilter(x: number): number {
  const a = x < 0 ? -x : x;
  return a < 1 ? 1 - a : 0;
}

/**
 * Coefficients for resampling `inSize` samples to `outSize` (docs/model.md §7.3), in the same
 * float64 operations and order as Pillow so the rounded integers match exactly:
 *
 * ```
 * scale = in / out;  fs = max(scale, 1);  support = 1 * fs;  ss = 1 / fs
 * center = (i + 0.5) * scale
 * xmin = max(0, trunc(center - support + 0.5));  xmax = min(in, trunc(center + support + 0.5))
 * w[t] = tri((t + xmin - center + 0.5) * ss),  normalized to sum 1 (unless the sum is 0)
 * k[t] = trunc(w[t] * 2^22 + 0.5)   (w >= 0; trunc(w * 2^22 - 0.5) otherwise)
 * ```
 *
 * Like Pillow, this multiplies by `ss` rather than dividing by `fs`. Dividing gave the same
 * integers on every one of ~170,000 size pairs tried, but copying the operations keeps the
 * match exact by construction rather than by luck.
 */
export function bilinearCoefficients(inSize: number, outSize: number): AxisCoefficients {
  const scale = inSize / outSize;
  const filterScale = scale < 1 ? 1 : scale;
  const support = filterScale;
  const kSize = Math.ceil(support) * 2 + 1;
  const ss = 1 / filterScale;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * kSize);
  const w = new Float64Array(kSize);
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let sum = 0;
    for (let t = 0; t < xmax; t++) {
      const v = bilinearFilter((t + xmin - center + 0.5) * ss);
      w[t] = v;
      sum += v;
    }
    const base = i * kSize;
    for (let t = 0; t < xmax; t++) {
      const v = sum !== 0 ? w[t]! / sum : w[t]!;
      weights[base + t] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    start[i] = xmin;
    count[i] = xmax;
  }
  return { start, count, kSize, weights };
}
