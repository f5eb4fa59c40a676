import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../runtime/paths.js';
import { type AxisCoefficients, bilinearCoefficients } from './bilinear-coefficients.js';
import type { RgbImage } from './rgb-image.js';

/**
 * The compiled kernels (wasm/resample.ts). Built by `npm run build` (asconfig.json) into
 * dist/ beside the JS that loads it; the path is resolved from the package root so that code
 * running from source (vitest) finds the same file: `npm test` builds first. Without it (or
 * without WebAssembly SIMD) resizing falls back to the JS passes of bilinear.ts.
 */
const WASM_PATH = ['dist', 'services', 'model', 'image', 'wasm', 'resample.wasm'] as const;

/**
 * Wasm memory cannot shrink, and each thread (each preprocessor worker) has its own: it is
 * kept between calls up to this size (a 12-megapixel photo needs about 50 MiB), and an
 * instance that grew past it is dropped after the call, for the GC to reclaim.
 */
const RETAIN_BYTES = 64 << 20;
const PAGE = 65536;

interface Memory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}

/** The exports of wasm/resample.ts; every pointer is a byte offset into `memory`. */
interface Kernel {
  memory: Memory;
  heapBase(): number;
  prepareTaps(
    weights: number,
    count: number,
    kSize: number,
    outSize: number,
    pairs: number,
    dst: number,
  ): void;
  weightedRows(
    src: number,
    tapStride: number,
    rowBytes: number,
    start: number,
    count: number,
    outCount: number,
    rowOffset: number,
    pairs: number,
    wv: number,
    out: number,
    outStride: number,
    scratch: number,
  ): void;
  horizontalStrips(
    src: number,
    srcStride: number,
    rows: number,
    inWidth: number,
    start: number,
    count: number,
    outWidth: number,
    pairs: number,
    wv: number,
    out: number,
    outStride: number,
    planeStride: number,
    tIn: number,
    tOut: number,
    tmp: number,
  ): void;
  horizontal(
    src: number,
    srcStride: number,
    rows: number,
    start: number,
    outWidth: number,
    pairs: number,
    wv: number,
    out: number,
    outStride: number,
    planeStride: number,
  ): void;
  toPlanar(src: number, srcStride: number, width: number, height: number, out: number): void;
}

/** The part of the WebAssembly JS API used here (the project's `lib` has no DOM types). */
interface WebAssemblyApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}

let compiled: object | null | undefined;
let kernel: Kernel | undefined;
let loadError: unknown;

/**
 * This thread's instance, made on first use: the module is small, so it is compiled
 * synchronously, once per thread (each worker thread has its own module graph, so its own
 * instance and memory). Null if the .wasm is missing or cannot compile.
 */
function getKernel(): Kernel | null {
  if (kernel) return kernel;
  if (compiled === null) return null;
  try {
    const api = (globalThis as unknown as { WebAssembly: WebAssemblyApi }).WebAssembly;
    compiled ??= new api.Module(readFileSync(join(packageRoot(), ...WASM_PATH)));
    kernel = new api.Instance(compiled, {}).exports as Kernel;
    return kernel;
  } catch (err) {
    compiled = null;
    loadError = err;
    return null;
  }
}

/** Whether resizing runs in WebAssembly here, or why not. */
export function wasmKernelStatus(): { available: boolean; error?: unknown } {
  return getKernel() ? { available: true } : { available: false, error: loadError };
}

/** One resize of a rectangle [y0, y1) x [x0, x1) of the source to height x width. */
export interface WasmResizeJob {
  y0: number;
  y1: number;
  x0: number;
  x1: number;
  height: number;
  width: number;
  /** Run the vertical pass first (Pillow 13's order, when it applies). */
  verticalFirst: boolean;
}

/** Offsets of a bump allocation in wasm memory, 16-byte aligned. */
class Layout {
  constructor(public end: number) {}
  take(bytes: number): number {
    const at = Math.ceil(this.end / 16) * 16; // not `& ~15`: offsets may pass 2^31
    this.end = at + bytes;
    return at;
  }
}

/** One axis's coefficients in wasm memory, and its weight vectors (prepareTaps). */
interface PlacedAxis {
  coeffs: AxisCoefficients;
  size: number;
  start: number;
  count: number;
  weights: number;
  /** Tap pairs per output in `wv`: the longest filter's, rounded up. */
  pairs: number;
  wv: number;
}

function placeAxis(layout: Layout, coeffs: AxisCoefficients): PlacedAxis {
  let most = 1;
  for (const n of coeffs.count) if (n > most) most = n;
  const pairs = (most + 1) >> 1;
  const size = coeffs.start.length;
  return {
    coeffs,
    size,
    start: layout.take(coeffs.start.byteLength),
    count: layout.take(coeffs.count.byteLength),
    weights: layout.take(coeffs.weights.byteLength),
    pairs,
    wv: layout.take(size * pairs * 32),
  };
}

function writeAxis(k: Kernel, axis: PlacedAxis): void {
  const { buffer } = k.memory;
  const { start, count, weights, kSize } = axis.coeffs;
  new Int32Array(buffer, axis.start, start.length).set(start);
  new Int32Array(buffer, axis.count, count.length).set(count);
  new Int32Array(buffer, axis.weights, weights.length).set(weights);
  k.prepareTaps(axis.weights, axis.count, kSize, axis.size, axis.pairs, axis.wv);
}

/** Grows memory to at least `bytes`; false if it cannot (over 4 GiB or out of memory). */
function reserve(k: Kernel, bytes: number): boolean {
  const have = k.memory.buffer.byteLength;
  if (bytes <= have) return true;
  try {
    k.memory.grow(Math.ceil((bytes - have) / PAGE));
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs `jobs` on `img` in wasm, with the source copied into wasm memory once for all of
 * them, and returns each output (HWC, or CHW planar when `chw`) in a new array. Null when
 * the kernel is unavailable or the memory cannot grow enough; the caller then uses JS.
 * Jobs must have a non-empty source rectangle; one of the same size is a copy (into CHW).
 */
export function resizeWasm(
  img: RgbImage,
  jobs: WasmResizeJob[],
  chw: boolean,
): Uint8Array[] | null {
  const k = getKernel();
  if (!k) return null;
  const input = new Layout(k.heapBase()).take(img.data.length);
  const jobsFrom = input + img.data.length;
  let copied = false;
  const outputs: Uint8Array[] = [];
  try {
    for (const job of jobs) {
      const out = runJob(k, img, input, jobsFrom, copied, job, chw);
      if (!out) return null;
      copied = true;
      outputs.push(out);
    }
    return outputs;
  } finally {
    // A rare huge image would otherwise pin its memory in this thread for good.
    if (k.memory.buffer.byteLength > RETAIN_BYTES) kernel = undefined;
  }
}

function runJob(
  k: Kernel,
  img: RgbImage,
  input: number,
  jobsFrom: number,
  copied: boolean,
  job: WasmResizeJob,
  chw: boolean,
): Uint8Array | null {
  const { y0, x0, height, width } = job;
  const inHeight = job.y1 - y0;
  const inWidth = job.x1 - x0;
  const srcStride = img.width * 3;
  const src = input + y0 * srcStride + x0 * 3;
  const needH = width !== inWidth;
  const needV = height !== inHeight;
  const outBytes = height * width * 3;

  const layout = new Layout(jobsFrom);
  const out = layout.take(outBytes);
  const horiz = needH ? placeAxis(layout, bilinearCoefficients(inWidth, width)) : undefined;
  const vert = needV ? placeAxis(layout, bilinearCoefficients(inHeight, height)) : undefined;
  // Rows of the input the vertical pass reads, when it runs second: [rowFirst, rowLast).
  const hFirst = needH && needV && !job.verticalFirst;
  const rowFirst = hFirst ? vert!.coeffs.start[0]! : 0;
  const rowLast = hFirst ? lastRow(vert!.coeffs) : inHeight;
  const tempBytes =
    needH && needV
      ? job.verticalFirst
        ? height * inWidth * 3
        : (rowLast - rowFirst) * width * 3
      : needV && chw
        ? outBytes
        : 0;
  const temp = layout.take(tempBytes);
  const hRows = needV ? (job.verticalFirst ? height : rowLast - rowFirst) : height;
  // horizontalStrips transposes 16 rows at a time; `horizontal` does what it cannot.
  const strips = needH && hRows >= 16 && inWidth >= 16 && width >= 16;
  const tIn = strips ? layout.take(inWidth * 48) : 0;
  const tOut = strips ? layout.take(width * 48) : 0;
  const scratch = layout.take(256);
  // Kernels read past the ends of their inputs (16 bytes past a row at most, or 6 bytes a
  // tap pair past a pixel's first tap, with weight 0): that memory only has to exist.
  const end = layout.take(6 * (horiz?.pairs ?? 0) + 64);
  if (!reserve(k, end)) return null;

  if (!copied) new Uint8Array(k.memory.buffer, input, img.data.length).set(img.data);
  if (horiz) writeAxis(k, horiz);
  if (vert) writeAxis(k, vert);

  const plane = height * width;
  const horizontalPass = (from: number, stride: number, to: number, planar: boolean): void => {
    const h = horiz!;
    const outStride = planar ? width : width * 3;
    const planeStride = planar ? hRows * width : 0;
    if (strips) {
      k.horizontalStrips(
        from,
        stride,
        hRows,
        inWidth,
        h.start,
        h.count,
        width,
        h.pairs,
        h.wv,
        to,
        outStride,
        planeStride,
        tIn,
        tOut,
        scratch,
      );
    } else {
      k.horizontal(from, stride, hRows, h.start, width, h.pairs, h.wv, to, outStride, planeStride);
    }
  };
  const verticalPass = (
    from: number,
    stride: number,
    rowBytes: number,
    rowOffset: number,
    to: number,
  ): void => {
    const v = vert!;
    k.weightedRows(
      from,
      stride,
      rowBytes,
      v.start,
      v.count,
      height,
      rowOffset,
      v.pairs,
      v.wv,
      to,
      rowBytes,
      scratch,
    );
  };

  if (!needV && !needH) {
    if (chw) k.toPlanar(src, srcStride, width, height, out);
    else copyRows(k, src, srcStride, width * 3, height, out);
  } else if (!needV) {
    horizontalPass(src, srcStride, out, chw);
  } else if (!needH) {
    verticalPass(src, srcStride, width * 3, 0, chw ? temp : out);
    if (chw) k.toPlanar(temp, width * 3, width, height, out);
  } else if (job.verticalFirst) {
    verticalPass(src, srcStride, inWidth * 3, 0, temp);
    horizontalPass(temp, inWidth * 3, out, chw);
  } else {
    horizontalPass(src + rowFirst * srcStride, srcStride, temp, chw);
    if (chw) {
      // One plane at a time: the vertical pass does not care about the layout.
      const rows = rowLast - rowFirst;
      for (let c = 0; c < 3; c++) {
        verticalPass(temp + c * rows * width, width, width, rowFirst, out + c * plane);
      }
    } else {
      verticalPass(temp, width * 3, width * 3, rowFirst, out);
    }
  }
  return new Uint8Array(k.memory.buffer, out, outBytes).slice();
}

function copyRows(
  k: Kernel,
  src: number,
  srcStride: number,
  rowBytes: number,
  rows: number,
  out: number,
): void {
  const mem = new Uint8Array(k.memory.buffer);
  for (let y = 0; y < rows; y++) {
    mem.copyWithin(out + y * rowBytes, src + y * srcStride, src + y * srcStride + rowBytes);
  }
}

function lastRow(coeffs: AxisCoefficients): number {
  const last = coeffs.start.length - 1;
  return coeffs.start[last]! + coeffs.count[last]!;
}
