// GPTQ integer weights as Hugging Face stores them, and the same weights in the layout of ONNX
// Runtime's MatMulNBits. docs/quantization.md draws both layouts; in short, for a linear layer
// with K inputs, N outputs, b bits, groups of g inputs and f = 32 / b values per int32 word:
//
//   qweight  int32 [K/f, N]          input k of output n: bits b·(k%f) .. of word [k/f, n]
//   qzeros   int32 [K/g, ceil(N/f)]  group j of output n: bits b·(n%f) .. of word [j, n/f],
//                                    holding (zero point - 1)  (the "v1" convention)
//   scales   float16 [K/g, N]
//   g_idx    int32 [K]               k / g (no act-order)
//   weight[n, k] = scales[k/g, n] · (q[k, n] - zero[k/g, n])
//
//   MatMulNBits B  uint8 [N, K/g, g·b/8]  row n's values along k, packed low bits first
//               scales [N · K/g]          zero_points uint8 [N · ceil((K/g)·b/8)], packed
//                                         the same way along the groups of a row
//
// Packing along k low bits first is what both use, so B is qweight transposed word by word.
import { float16ToFloat32, float32ToFloat16 } from '../convert/half.js';
import { gptqShapes, packFactor, type QuantBits } from './quantization-config.js';

export interface GptqShape {
  /** Outputs. */
  n: number;
  /** Inputs. */
  k: number;
  bits: QuantBits;
  groupSize: number;
}

/** The four tensors of one GPTQ linear layer. */
export interface GptqTensors {
  qweight: Int32Array;
  qzeros: Int32Array;
  /** float16 bits. */
  scales: Uint16Array;
  gIdx: Int32Array;
}

export class GptqLayoutError extends Error {
  override readonly name = 'GptqLayoutError';
}

/** Checks that `groupSize` and the pack factor divide the input dimension. */
export function checkGptqShape({ n, k, bits, groupSize }: GptqShape, what: string): void {
  if (k % groupSize !== 0) {
    throw new GptqLayoutError(
      `${what}: group size ${groupSize} does not divide its input dimension ${k} (choose --group-size ${[32, 64, 128].filter((g) => k % g === 0).join(' or ') || 'none fits'})`,
    );
  }
  if (k % packFactor(bits) !== 0) {
    throw new GptqLayoutError(
      `${what}: ${bits}-bit packing needs K divisible by ${packFactor(bits)}, got ${k}`,
    );
  }
  if (!(n > 0)) throw new GptqLayoutError(`${what}: no outputs`);
}

/** `out` [cols, rows] = `src` [rows, cols] transposed, in tiles that stay in cache. */
function transposeWords(src: Int32Array, rows: number, cols: number, out: Int32Array): void {
  const TILE = 64;
  for (let r0 = 0; r0 < rows; r0 += TILE) {
    const r1 = Math.min(rows, r0 + TILE);
    for (let c0 = 0; c0 < cols; c0 += TILE) {
      const c1 = Math.min(cols, c0 + TILE);
      for (let r = r0; r < r1; r++) {
        const from = r * cols;
        for (let c = c0; c < c1; c++) out[c * rows + r] = src[from + c]!;
      }
    }
  }
}

/** Rounds half to even, as torch.round does. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Round-to-nearest GPTQ quantization of a float weight [n, k] (Hugging Face's [out, in]),
 * group by group, with GPTQ's own quantizer rules (auto_gptq `Quantizer.find_params`):
 * the range always includes 0; symmetric groups use ±max|w| with zero point 2^(b-1);
 * an all-zero group gets the range [-1, 1]. The scale is rounded to float16 first and the
 * integers are computed with that rounded scale, so dequantizing what is stored gives the
 * nearest grid point. v1 stores zero - 1, so an asymmetric zero point is kept >= 1.
 */
export function quantizeGptq(
  weight: Float32Array,
  shape: GptqShape & { sym: boolean },
): GptqTensors {
  const { n, k, bits, groupSize: g, sym } = shape;
  checkGptqShape(shape, 'quantize');
  if (weight.length !== n * k)
    throw new GptqLayoutError(`weight has ${weight.length} values, expected ${n}×${k}`);
  const f = packFactor(bits);
  const maxq = (1 << bits) - 1;
  const groups = k / g;
  const zeroWords = Math.ceil(n / f);
  const qweight = new Int32Array((k / f) * n);
  const qzeros = new Int32Array(groups * zeroWords);
  const scales = new Uint16Array(groups * n);
  const gIdx = Int32Array.from({ length: k }, (_, i) => Math.floor(i / g));
  // Each row's words are packed contiguously ([n, k/f], cache-friendly), then transposed to
  // GPTQ's [k/f, n] in tiles: writing GPTQ's layout directly strides n words per value.
  const words = k / f;
  const rows = new Int32Array(n * words);
  for (let row = 0; row < n; row++) {
    const base = row * k;
    const out = row * words;
    for (let j = 0; j < groups; j++) {
      let lo = 0;
      let hi = 0;
      for (let i = j * g; i < (j + 1) * g; i++) {
        const w = weight[base + i]!;
        if (!Number.isFinite(w)) {
          throw new GptqLayoutError(`row ${row}, input ${i}: the weight holds NaN or Infinity`);
        }
        if (w < lo) lo = w;
        if (w > hi) hi = w;
      }
      let zero: number;
      if (sym) {
        const m = Math.max(-lo, hi);
        lo = -m;
        hi = m;
      }
      if (lo === 0 && hi === 0) {
        lo = -1;
        hi = 1;
      }
      const scaleBits = float32ToFloat16((hi - lo) / maxq);
      let scale = float16ToFloat32(scaleBits);
      let stored = scaleBits;
      if (!(scale > 0)) {
        stored = 1; // the smallest float16 step: a group of values below float16's range
        scale = float16ToFloat32(stored);
      }
      if (sym) zero = (maxq + 1) / 2;
      else zero = Math.min(maxq, Math.max(1, roundHalfEven(-lo / scale)));
      scales[j * n + row] = stored;
      qzeros[j * zeroWords + Math.floor(row / f)]! |= ((zero - 1) & maxq) << (bits * (row % f));
      for (let i = j * g; i < (j + 1) * g; i++) {
        const q = Math.min(maxq, Math.max(0, roundHalfEven(weight[base + i]! / scale) + zero));
        rows[out + Math.floor(i / f)]! |= q << (bits * (i % f));
      }
    }
  }
  transposeWords(rows, n, words, qweight);
  return { qweight, qzeros, scales, gIdx };
}

/** The float weight [n, k] that GPTQ tensors stand for (scales given as float16 bits). */
export function dequantizeGptq(t: Omit<GptqTensors, 'gIdx'>, shape: GptqShape): Float32Array {
  const { n, k, bits, groupSize: g } = shape;
  const f = packFactor(bits);
  const mask = (1 << bits) - 1;
  const zeroWords = Math.ceil(n / f);
  const out = new Float32Array(n * k);
  for (let row = 0; row < n; row++) {
    for (let i = 0; i < k; i++) {
      const j = Math.floor(i / g);
      const q = (t.qweight[Math.floor(i / f) * n + row]! >>> (bits * (i % f))) & mask;
      const zero =
        ((t.qzeros[j * zeroWords + Math.floor(row / f)]! >>> (bits * (row % f))) & mask) + 1;
      out[row * k + i] = Math.fround(float16ToFloat32(t.scales[j * n + row]!) * (q - zero));
    }
  }
  return out;
}

/** One linear layer in MatMulNBits' layout. */
export interface MatMulNBitsWeights {
  /** uint8 [N, K/g, g·b/8]. */
  b: Uint8Array;
  /** [N · K/g], float32 values or float16 bits. */
  scales: Float32Array | Uint16Array;
  /** uint8, packed along each row's groups; null when every zero point is 2^(b-1) (the default). */
  zeroPoints: Uint8Array | null;
}

/**
 * Repacks GPTQ tensors for MatMulNBits. `scales` may be float16 bits (as GPTQ stores them)
 * or float32 (a checkpoint rewritten by `loupe convert --dtype float32`); `scaleType` is the
 * graph's float type. Throws on a zero point MatMulNBits cannot hold: v1 stores zero - 1,
 * so a stored all-ones field means 2^b (written by tools that let the zero underflow).
 */
export function repackForMatMulNBits(
  t: { qweight: Int32Array; qzeros: Int32Array; scales: Uint16Array | Float32Array },
  shape: GptqShape,
  { scaleType, what }: { scaleType: 'float32' | 'float16'; what: string },
): MatMulNBitsWeights {
  const { n, k, bits, groupSize: g } = shape;
  checkGptqShape(shape, what);
  const f = packFactor(bits);
  const words = k / f; // int32 words per row of B
  const groups = k / g;
  const shapes = gptqShapes({ n, k }, { bits, groupSize: g });
  const expect = (name: string, got: number, dims: readonly number[]) => {
    const want = dims.reduce((a, b) => a * b, 1);
    if (got !== want)
      throw new GptqLayoutError(`${what}.${name} has ${got} values, expected ${want}`);
  };
  expect('qweight', t.qweight.length, shapes.qweight);
  expect('qzeros', t.qzeros.length, shapes.qzeros);
  expect('scales', t.scales.length, shapes.scales);

  // B = qweight [words, n] transposed to [n, words].
  const b32 = new Int32Array(n * words);
  transposeWords(t.qweight, words, n, b32);

  const scales =
    scaleType === 'float32' ? new Float32Array(n * groups) : new Uint16Array(n * groups);
  const fromHalf = t.scales instanceof Uint16Array;
  for (let j = 0; j < groups; j++) {
    for (let r = 0; r < n; r++) {
      const v = t.scales[j * n + r]!;
      scales[r * groups + j] =
        scaleType === 'float32'
          ? fromHalf
            ? float16ToFloat32(v)
            : v
          : fromHalf
            ? v
            : float32ToFloat16(v);
    }
  }

  const mask = (1 << bits) - 1;
  const zeroWords = Math.ceil(n / f);
  const rowBytes = Math.ceil((groups * bits) / 8);
  const zeroPoints = new Uint8Array(n * rowBytes);
  const neutral = 1 << (bits - 1);
  let allNeutral = true;
  for (let j = 0; j < groups; j++) {
    for (let r = 0; r < n; r++) {
      const zero = ((t.qzeros[j * zeroWords + Math.floor(r / f)]! >>> (bits * (r % f))) & mask) + 1;
      if (zero > mask) {
        throw new GptqLayoutError(
          `${what}.qzeros: group ${j} of output ${r} stores ${mask}, a zero point of ${zero}, which ${bits}-bit MatMulNBits cannot hold (a v1 checkpoint whose zero point underflowed; requantize it)`,
        );
      }
      if (zero !== neutral) allNeutral = false;
      if (bits === 8) zeroPoints[r * rowBytes + j] = zero;
      else zeroPoints[r * rowBytes + (j >> 1)]! |= zero << ((j & 1) * 4);
    }
  }
  return {
    b: new Uint8Array(b32.buffer),
    scales,
    zeroPoints: allNeutral ? null : zeroPoints,
  };
}
