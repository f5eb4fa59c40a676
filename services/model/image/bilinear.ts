import { type AxisCoefficients, bilinearCoefficients } from './bilinear-coefficients.js';
import { type WasmResizeJob, resizeWasm, wasmKernelStatus } from './bilinear-wasm.js';
import { type RgbImage, toChw } from './rgb-image.js';
import { cropImage } from './split.js';

// Fixed point as in bilinear-coefficients.ts (2^22 = 1.0). Declared here rather than imported:
// V8 does not constant-fold imported bindings, which made the passes ~25% slower.
const PRECISION_BITS = 22;
/** The rounding term every accumulator starts from: 0.5. */
const HALF = 1 << 21;
/** An accumulator at or above this is >= 256 once shifted: clip to 255. */
const CLIP_HIGH = 1 << 30;

/**
 * Clip of a fixed-point accumulator to 8 bits (Pillow's `clip8`). Accumulators stay below
 * 2^31: at most 255 * (2^22 + taps) + 2^21, since bilinear weights are never negative.
 */
function clip8(acc: number): number {
  return acc >= CLIP_HIGH ? 255 : acc <= 0 ? 0 : acc >> PRECISION_BITS;
}

// The passes below use int32 arithmetic (`Math.imul`, `| 0`) so that V8 keeps every sum in
// an integer register with no overflow checks; no sum can overflow (see clip8).

/**
 * Horizontal pass over rows [rowFirst, rowFirst + rows) of `src` (width `inWidth`) into a
 * new interleaved buffer `rows` high and `coeffs.start.length` wide. Two rows at a time, so
 * each weight load serves six multiply-adds.
 */
function resampleHorizontal(
  src: Uint8Array,
  inWidth: number,
  rowFirst: number,
  rows: number,
  coeffs: AxisCoefficients,
): Uint8Array {
  const { start, count, kSize, weights } = coeffs;
  const outWidth = start.length;
  const inStride = inWidth * 3;
  const outStride = outWidth * 3;
  const out = new Uint8Array(rows * outStride);
  let y = 0;
  for (; y + 1 < rows; y += 2) {
    const rowIn = (rowFirst + y) * inStride;
    let o = y * outStride;
    for (let x = 0; x < outWidth; x++) {
      let r0 = HALF;
      let g0 = HALF;
      let b0 = HALF;
      let r1 = HALF;
      let g1 = HALF;
      let b1 = HALF;
      let s = (rowIn + start[x]! * 3) | 0;
      const k0 = x * kSize;
      const k1 = (k0 + count[x]!) | 0;
      for (let k = k0; k < k1; k = (k + 1) | 0, s = (s + 3) | 0) {
        const w = weights[k]!;
        const q = (s + inStride) | 0;
        r0 = (r0 + Math.imul(src[s]!, w)) | 0;
        g0 = (g0 + Math.imul(src[s + 1]!, w)) | 0;
        b0 = (b0 + Math.imul(src[s + 2]!, w)) | 0;
        r1 = (r1 + Math.imul(src[q]!, w)) | 0;
        g1 = (g1 + Math.imul(src[q + 1]!, w)) | 0;
        b1 = (b1 + Math.imul(src[q + 2]!, w)) | 0;
      }
      out[o] = clip8(r0);
      out[o + 1] = clip8(g0);
      out[o + 2] = clip8(b0);
      out[o + outStride] = clip8(r1);
      out[o + outStride + 1] = clip8(g1);
      out[o + outStride + 2] = clip8(b1);
      o = (o + 3) | 0;
    }
  }
  if (y < rows) {
    const rowIn = (rowFirst + y) * inStride;
    let o = y * outStride;
    for (let x = 0; x < outWidth; x++) {
      let r = HALF;
      let g = HALF;
      let b = HALF;
      let s = (rowIn + start[x]! * 3) | 0;
      const k0 = x * kSize;
      const k1 = (k0 + count[x]!) | 0;
      for (let k = k0; k < k1; k = (k + 1) | 0, s = (s + 3) | 0) {
        const w = weights[k]!;
        r = (r + Math.imul(src[s]!, w)) | 0;
        g = (g + Math.imul(src[s + 1]!, w)) | 0;
        b = (b + Math.imul(src[s + 2]!, w)) | 0;
      }
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
      o = (o + 3) | 0;
    }
  }
  return out;
}

/**
 * Weight of tap `t` of an output whose `n` weights start at `weights[k]`; 0 past the last,
 * so a fixed-width kernel can run over missing taps (whose rows point at the first row).
 */
function tap(weights: Int32Array, k: number, n: number, t: number): number {
  return t < n ? weights[k + t]! : 0;
}

/**
 * One output row from at most 3 input rows, straight into `out`. Upscaling and mild
 * downscaling (scale < ~1.5) need no more.
 */
function verticalRow3(
  src: Uint8Array,
  stride: number,
  row: number,
  weights: Int32Array,
  k: number,
  n: number,
  out: Uint8Array,
  o: number,
): void {
  const w0 = tap(weights, k, n, 0);
  const w1 = tap(weights, k, n, 1);
  const w2 = tap(weights, k, n, 2);
  const a = row | 0;
  const b = n > 1 ? (row + stride) | 0 : a;
  const c = n > 2 ? (row + 2 * stride) | 0 : a;
  for (let j = 0; j < stride; j = (j + 1) | 0) {
    out[o + j] = clip8(
      (HALF +
        Math.imul(src[a + j]!, w0) +
        Math.imul(src[b + j]!, w1) +
        Math.imul(src[c + j]!, w2)) |
        0,
    );
  }
}

/**
 * Up to 6 taps of one output row. `first`: start from the rounding constant rather than
 * `acc`; `last`: clip into `out` rather than store the partial sums in `acc`.
 */
function verticalTaps6(
  src: Uint8Array,
  stride: number,
  row: number,
  weights: Int32Array,
  k: number,
  n: number,
  acc: Int32Array,
  out: Uint8Array,
  o: number,
  first: boolean,
  last: boolean,
): void {
  const w0 = tap(weights, k, n, 0);
  const w1 = tap(weights, k, n, 1);
  const w2 = tap(weights, k, n, 2);
  const w3 = tap(weights, k, n, 3);
  const w4 = tap(weights, k, n, 4);
  const w5 = tap(weights, k, n, 5);
  const r0 = row | 0;
  const r1 = n > 1 ? (row + stride) | 0 : r0;
  const r2 = n > 2 ? (row + 2 * stride) | 0 : r0;
  const r3 = n > 3 ? (row + 3 * stride) | 0 : r0;
  const r4 = n > 4 ? (row + 4 * stride) | 0 : r0;
  const r5 = n > 5 ? (row + 5 * stride) | 0 : r0;
  if (first && last) {
    for (let j = 0; j < stride; j = (j + 1) | 0) {
      out[o + j] = clip8(
        (HALF +
          Math.imul(src[r0 + j]!, w0) +
          Math.imul(src[r1 + j]!, w1) +
          Math.imul(src[r2 + j]!, w2) +
          Math.imul(src[r3 + j]!, w3) +
          Math.imul(src[r4 + j]!, w4) +
          Math.imul(src[r5 + j]!, w5)) |
          0,
      );
    }
  } else if (first) {
    for (let j = 0; j < stride; j = (j + 1) | 0) {
      acc[j] =
        (HALF +
          Math.imul(src[r0 + j]!, w0) +
          Math.imul(src[r1 + j]!, w1) +
          Math.imul(src[r2 + j]!, w2) +
          Math.imul(src[r3 + j]!, w3) +
          Math.imul(src[r4 + j]!, w4) +
          Math.imul(src[r5 + j]!, w5)) |
        0;
    }
  } else if (last) {
    for (let j = 0; j < stride; j = (j + 1) | 0) {
      out[o + j] = clip8(
        (acc[j]! +
          Math.imul(src[r0 + j]!, w0) +
          Math.imul(src[r1 + j]!, w1) +
          Math.imul(src[r2 + j]!, w2) +
          Math.imul(src[r3 + j]!, w3) +
          Math.imul(src[r4 + j]!, w4) +
          Math.imul(src[r5 + j]!, w5)) |
          0,
      );
    }
  } else {
    for (let j = 0; j < stride; j = (j + 1) | 0) {
      acc[j] =
        (acc[j]! +
          Math.imul(src[r0 + j]!, w0) +
          Math.imul(src[r1 + j]!, w1) +
          Math.imul(src[r2 + j]!, w2) +
          Math.imul(src[r3 + j]!, w3) +
          Math.imul(src[r4 + j]!, w4) +
          Math.imul(src[r5 + j]!, w5)) |
        0;
    }
  }
}

/**
 * Vertical pass: each output row is a weighted sum of whole input rows, so the inner loops
 * run along rows (sequential memory) with the taps' weights held in registers, 3 or 6 taps
 * at a time; longer filters (downscaling by more than ~2.5) keep partial sums in one
 * row-sized accumulator. Pillow walks the taps per pixel instead; the integer sums are the
 * same. `rowOffset` is the input row that `src` starts at.
 */
function resampleVertical(
  src: Uint8Array,
  width: number,
  rowOffset: number,
  coeffs: AxisCoefficients,
): Uint8Array {
  const { start, count, kSize, weights } = coeffs;
  const outHeight = start.length;
  const stride = width * 3;
  const out = new Uint8Array(outHeight * stride);
  let acc: Int32Array | undefined;
  for (let y = 0; y < outHeight; y++) {
    const n = count[y]!;
    const k = y * kSize;
    const row = (start[y]! - rowOffset) * stride;
    const o = y * stride;
    if (n <= 3) {
      verticalRow3(src, stride, row, weights, k, n, out, o);
      continue;
    }
    acc ??= new Int32Array(stride);
    for (let t = 0; t < n; t += 6) {
      const taps = Math.min(6, n - t);
      verticalTaps6(
        src,
        stride,
        row + t * stride,
        weights,
        k + t,
        taps,
        acc,
        out,
        o,
        t === 0,
        t + 6 >= n,
      );
    }
  }
  return out;
}

/**
 * Which Pillow's order of the two passes to follow. The order changes the result (by ±1 in
 * places), because the intermediate image is rounded to uint8:
 * - `pillow13`: Pillow 13 (`ImagingResampleInner`) runs the vertical pass first when the
 *   height shrinks by more than twice as many pixels as the width, else horizontal first;
 * - `pillow12`: Pillow <= 12 (docs/model.md §7.3) always runs the horizontal pass first.
 */
export type PassOrder = 'pillow13' | 'pillow12';

export interface ResizeOptions {
  /**
   * Default `pillow12`: the order of the Pillow releases contemporary with the reference
   * transformers (4.45-4.54) and with Idefics2's training, and of docs/model.md §7.3.
   */
  passOrder?: PassOrder;
}

/**
 * Pillow 13's rule: vertical pass first iff `inH - outH > 0 && inH - outH > 2 * (inW - outW)`,
 * so that the horizontal pass has fewer rows to do.
 */
export function verticalPassFirst(
  inHeight: number,
  inWidth: number,
  outHeight: number,
  outWidth: number,
): boolean {
  const dropH = inHeight - outHeight;
  return dropH > 0 && dropH > (inWidth - outWidth) * 2;
}

/**
 * Pillow's `Image.resize((width, height), Image.BILINEAR)` on an 8-bit RGB image, bit for bit
 * (docs/model.md §7.3): two separable passes, each only if that side changes, through a uint8
 * intermediate, in the order of `passOrder`. Horizontal first only computes the input rows
 * the vertical pass will read. The same size returns a copy, and an empty input (0 rows or
 * columns, from splitting a 1-pixel-wide image) gives a black image, as PIL does.
 *
 * This is the portable reference implementation; {@link resizeBilinear} runs the same
 * arithmetic in WebAssembly SIMD (bilinear-wasm.ts) and falls back to this.
 */
export function resizeBilinearJs(
  img: RgbImage,
  height: number,
  width: number,
  { passOrder = 'pillow12' }: ResizeOptions = {},
): RgbImage {
  checkTarget(height, width);
  if (img.height === 0 || img.width === 0) {
    return { height, width, data: new Uint8Array(height * width * 3) };
  }
  const needHorizontal = width !== img.width;
  const needVertical = height !== img.height;
  if (!needHorizontal && !needVertical) {
    return { height, width, data: img.data.slice() };
  }
  if (!needVertical) {
    const horiz = bilinearCoefficients(img.width, width);
    return { height, width, data: resampleHorizontal(img.data, img.width, 0, height, horiz) };
  }
  const vert = bilinearCoefficients(img.height, height);
  if (!needHorizontal) {
    return { height, width, data: resampleVertical(img.data, width, 0, vert) };
  }
  const horiz = bilinearCoefficients(img.width, width);
  if (passOrder === 'pillow13' && verticalPassFirst(img.height, img.width, height, width)) {
    const temp = resampleVertical(img.data, img.width, 0, vert);
    return { height, width, data: resampleHorizontal(temp, img.width, 0, height, horiz) };
  }
  // Rows of the input the vertical pass reads: [rowFirst, rowLast).
  const rowFirst = vert.start[0]!;
  const rowLast = vert.start[height - 1]! + vert.count[height - 1]!;
  const temp = resampleHorizontal(img.data, img.width, rowFirst, rowLast - rowFirst, horiz);
  return { height, width, data: resampleVertical(temp, width, rowFirst, vert) };
}

function checkTarget(height: number, width: number): void {
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new RangeError(`resize target must be positive integers, got ${width}x${height}`);
  }
}

/**
 * `resizeBilinear` of the rectangle rows [y0, y1) x columns [x0, x1) of an image (as if it
 * had been cropped first, e.g. by splitImage) to `height` x `width`.
 */
export interface CropResize {
  y0: number;
  y1: number;
  x0: number;
  x1: number;
  height: number;
  width: number;
}

function checkCrop(img: RgbImage, c: CropResize): void {
  checkTarget(c.height, c.width);
  const ok =
    [c.y0, c.y1, c.x0, c.x1].every(Number.isInteger) &&
    c.y0 >= 0 &&
    c.y0 <= c.y1 &&
    c.y1 <= img.height &&
    c.x0 >= 0 &&
    c.x0 <= c.x1 &&
    c.x1 <= img.width;
  if (!ok) {
    throw new RangeError(
      `crop rows [${c.y0}, ${c.y1}) columns [${c.x0}, ${c.x1}) is outside ${img.width}x${img.height}`,
    );
  }
}

function cropOf(img: RgbImage, c: CropResize): RgbImage {
  return c.y0 === 0 && c.x0 === 0 && c.y1 === img.height && c.x1 === img.width
    ? img
    : cropImage(img, c.y0, c.y1, c.x0, c.x1);
}

/**
 * Resizes crops of `img` (see CropResize), each exactly as `resizeBilinearJs` of the cropped
 * image would, in HWC or CHW (`chw`) layout. The WebAssembly kernels take every crop they
 * can (see resizeWasm: the image goes into wasm memory once for all, and the crops are read
 * in place); the rest (empty crops, same-size HWC copies) and everything when wasm is
 * unavailable go through the JS path.
 */
function resizeCrops(
  img: RgbImage,
  crops: CropResize[],
  passOrder: PassOrder,
  chw: boolean,
): Uint8Array[] {
  for (const c of crops) checkCrop(img, c);
  const jobs: WasmResizeJob[] = [];
  const jobOf: number[] = []; // crop index -> job index, or -1
  for (const c of crops) {
    const inHeight = c.y1 - c.y0;
    const inWidth = c.x1 - c.x0;
    const copy = c.height === inHeight && c.width === inWidth;
    if (inHeight === 0 || inWidth === 0 || (copy && !chw)) {
      jobOf.push(-1);
      continue;
    }
    jobOf.push(jobs.length);
    jobs.push({
      ...c,
      verticalFirst:
        passOrder === 'pillow13' && verticalPassFirst(inHeight, inWidth, c.height, c.width),
    });
  }
  const fromWasm = jobs.length > 0 ? resizeWasm(img, jobs, chw) : null;
  return crops.map((c, i) => {
    const done = fromWasm?.[jobOf[i]!];
    if (done) return done;
    const resized = resizeBilinearJs(cropOf(img, c), c.height, c.width, { passOrder });
    return chw ? toChw(resized) : resized.data;
  });
}

/**
 * Pillow's `Image.resize((width, height), Image.BILINEAR)` on an 8-bit RGB image, bit for bit
 * (docs/model.md §7.3): the result of {@link resizeBilinearJs} (same size: a copy; empty input:
 * black), computed by the WebAssembly SIMD kernels of bilinear-wasm.ts where they load, else
 * by the JS passes.
 */
export function resizeBilinear(
  img: RgbImage,
  height: number,
  width: number,
  { passOrder = 'pillow12' }: ResizeOptions = {},
): RgbImage {
  checkTarget(height, width);
  const crop = { y0: 0, y1: img.height, x0: 0, x1: img.width, height, width };
  return { height, width, data: resizeCrops(img, [crop], passOrder, false)[0]! };
}

/**
 * `toChw(resizeBilinear(img, height, width, options))` in one go: the last pass writes the
 * planes [3, height, width] directly.
 */
export function resizeBilinearChw(
  img: RgbImage,
  height: number,
  width: number,
  { passOrder = 'pillow12' }: ResizeOptions = {},
): Uint8Array {
  checkTarget(height, width);
  const crop = { y0: 0, y1: img.height, x0: 0, x1: img.width, height, width };
  return resizeCrops(img, [crop], passOrder, true)[0]!;
}

/**
 * For each crop, `toChw(resizeBilinear(cropImage(img, y0, y1, x0, x1), height, width))`,
 * without making the crops: the image splitting of the pipeline in one call.
 */
export function resizeCropsChw(
  img: RgbImage,
  crops: CropResize[],
  { passOrder = 'pillow12' }: ResizeOptions = {},
): Uint8Array[] {
  return resizeCrops(img, crops, passOrder, true);
}

/** Which implementation `resizeBilinear` and friends run in this thread. */
export function bilinearBackend(): 'wasm' | 'js' {
  return wasmKernelStatus().available ? 'wasm' : 'js';
}
