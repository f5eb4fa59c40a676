// AssemblyScript, compiled to dist/services/model/image/wasm/resample.wasm by `npm run build`
// (asconfig.json); not Node TypeScript, so tsc and eslint skip this folder. The SIMD kernels
// of Pillow's 8-bit BILINEAR resampling (docs/model.md §7.3), driven by ../bilinear-wasm.ts:
// the coefficients are computed in JS (bilinear-coefficients.ts) and passed in as Int32
// arrays in linear memory. Every pointer is a byte offset chosen by the caller; the module
// allocates nothing.
//
// Exactness: every output value is 2^21 + Σ pixel * k (k: 22-bit fixed point, >= 0, sum
// below 2^31), shifted right by 22 and saturated to [0, 255], as Pillow computes it. The
// sums use `i32x4.dot_i16x8_s` (pmaddwd): a weight does not fit in 16 bits, so it is split as
// k = kh * 2^11 + kl (kh <= 2048, 0 <= kl < 2048); a pair of taps a, b is one dot product of
// the i16 lanes [pa, pb, pa, pb, ...] with [kha, khb, ...] and one with [kla, klb, ...], and
// (Σ p * kh) * 2^11 + Σ p * kl is the same integer as Σ p * k. The order of the additions
// does not matter: integer sums, no overflow.
//
// The tap weights are laid out by prepareTaps. Reads may run past the end of an input: up to
// 16 bytes past a row, and in `horizontal` up to 6 * pairs + 2 bytes past a pixel's first
// tap (with weight 0); the caller keeps that much memory after every input.

const HALF: i32 = 1 << 21;
const SPLIT_BITS: i32 = 11;
const LOW_MASK: i32 = (1 << SPLIT_BITS) - 1;
const PRECISION_BITS: i32 = 22;

/** Where the caller may start laying out its buffers. */
export function heapBase(): usize {
  return (__heap_base + 15) & ~15;
}

/**
 * The weight vectors of one axis: for output i and tap pair p (taps 2p and 2p + 1, weight 0
 * past count[i]), 32 bytes at dst + (i * pairs + p) * 32: the i16 lanes [kh(2p), kh(2p + 1)]
 * repeated 4 times, then the same for kl.
 */
export function prepareTaps(
  weights: usize,
  count: usize,
  kSize: i32,
  outSize: i32,
  pairs: i32,
  dst: usize,
): void {
  for (let i = 0; i < outSize; i++) {
    const n = load<i32>(count + ((<usize>i) << 2));
    const row = weights + ((<usize>(i * kSize)) << 2);
    for (let p = 0; p < pairs; p++) {
      const t = 2 * p;
      const w0 = t < n ? load<i32>(row + ((<usize>t) << 2)) : 0;
      const w1 = t + 1 < n ? load<i32>(row + ((<usize>t) << 2), 4) : 0;
      const at = dst + ((<usize>(i * pairs + p)) << 5);
      v128.store(at, i32x4.splat(((w0 >> SPLIT_BITS) & 0xffff) | ((w1 >> SPLIT_BITS) << 16)));
      v128.store(at, i32x4.splat((w0 & LOW_MASK) | ((w1 & LOW_MASK) << 16)), 16);
    }
  }
}

/** (high * 2^11 + low) >> 22 per i32 lane; `low` started from the rounding term. */
function finish(high: v128, low: v128): v128 {
  return i32x4.shr_s(i32x4.add(i32x4.shl(high, SPLIT_BITS), low), PRECISION_BITS);
}

/** Bytes 0-7 of a and b interleaved: a0 b0 a1 b1 ... a7 b7. */
function low(a: v128, b: v128): v128 {
  return i8x16.shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}

/** Bytes 8-15 of a and b interleaved: a8 b8 a9 b9 ... a15 b15. */
function high(a: v128, b: v128): v128 {
  return i8x16.shuffle(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}

// ---------------------------------------------------------------------------------------
// Weighted sums of whole rows: output row i = Σ_t k(i, t) * input row (start[i] + t), the
// same weight for every byte, so it runs 16 bytes at a time whatever the bytes are. This is
// the vertical pass (on interleaved rows, or on one plane), and the horizontal pass once the
// image is transposed (horizontalStrips).
// ---------------------------------------------------------------------------------------

/**
 * 16 bytes of an output row: taps at `first` + t * tapStride, t < n, weights at `wv`. A pair
 * of rows is interleaved bytewise and widened to i16, so one dot product sums both taps
 * for 4 bytes; an odd last tap pairs with itself at weight 0.
 */
function weightedChunk(first: usize, tapStride: usize, n: i32, wv: usize): v128 {
  const zero = i32x4.splat(0);
  const half = i32x4.splat(HALF);
  let h0 = zero;
  let h1 = zero;
  let h2 = zero;
  let h3 = zero;
  let l0 = half;
  let l1 = half;
  let l2 = half;
  let l3 = half;
  let rowA = first;
  let w = wv;
  for (let t = 0; t < n; t += 2) {
    const a = v128.load(rowA);
    const b = v128.load(t + 1 < n ? rowA + tapStride : rowA);
    const kh = v128.load(w);
    const kl = v128.load(w, 16);
    const lo = low(a, b);
    const hi = high(a, b);
    const v0 = i16x8.extend_low_i8x16_u(lo);
    const v1 = i16x8.extend_high_i8x16_u(lo);
    const v2 = i16x8.extend_low_i8x16_u(hi);
    const v3 = i16x8.extend_high_i8x16_u(hi);
    h0 = i32x4.add(h0, i32x4.dot_i16x8_s(v0, kh));
    l0 = i32x4.add(l0, i32x4.dot_i16x8_s(v0, kl));
    h1 = i32x4.add(h1, i32x4.dot_i16x8_s(v1, kh));
    l1 = i32x4.add(l1, i32x4.dot_i16x8_s(v1, kl));
    h2 = i32x4.add(h2, i32x4.dot_i16x8_s(v2, kh));
    l2 = i32x4.add(l2, i32x4.dot_i16x8_s(v2, kl));
    h3 = i32x4.add(h3, i32x4.dot_i16x8_s(v3, kh));
    l3 = i32x4.add(l3, i32x4.dot_i16x8_s(v3, kl));
    rowA += tapStride << 1;
    w += 32;
  }
  return i8x16.narrow_i16x8_u(
    i16x8.narrow_i32x4_s(finish(h0, l0), finish(h1, l1)),
    i16x8.narrow_i32x4_s(finish(h2, l2), finish(h3, l3)),
  );
}

/**
 * `outCount` output rows of `rowBytes` bytes, row i at out + i * outStride, from the input
 * rows start[i] - rowOffset + t (t < count[i]) at src + row * tapStride, with the vectors of
 * prepareTaps (`pairs` per output). `scratch`: 16 bytes, for rows shorter than 16 bytes.
 */
export function weightedRows(
  src: usize,
  tapStride: i32,
  rowBytes: i32,
  start: usize,
  count: usize,
  outCount: i32,
  rowOffset: i32,
  pairs: i32,
  wv: usize,
  out: usize,
  outStride: i32,
  scratch: usize,
): void {
  const short = rowBytes < 16;
  for (let i = 0; i < outCount; i++) {
    const n = load<i32>(count + ((<usize>i) << 2));
    const first = src + <usize>((load<i32>(start + ((<usize>i) << 2)) - rowOffset) * tapStride);
    const w = wv + ((<usize>(i * pairs)) << 5);
    const row = out + <usize>(i * outStride);
    // 16 bytes at a time; the last chunk ends at the row's end, overlapping the one before.
    let j = 0;
    for (;;) {
      if (j + 16 > rowBytes && !short) j = rowBytes - 16;
      const bytes = weightedChunk(first + <usize>j, tapStride, n, w);
      if (short) {
        v128.store(scratch, bytes);
        memory.copy(row, scratch, rowBytes);
        break;
      }
      v128.store(row + <usize>j, bytes);
      if (j + 16 >= rowBytes) break;
      j += 16;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Horizontal pass, transposed: 16 input rows at a time are transposed so that each byte
// column (channel c of pixel x, at byte 3x + c of a row) becomes one 16-byte vector of the 16
// rows; a pixel's 3 channels are then 48 consecutive bytes, and the horizontal pass is
// weightedRows over those 48-byte "rows". The result is transposed back, into interleaved
// rows or into planes. About twice as fast as `horizontal`, which handles what this cannot
// (fewer than 16 rows, input or output narrower than 16 pixels).
// ---------------------------------------------------------------------------------------

/**
 * Transposes a 16x16 byte block: byte c of row r (at src + r * srcStride) goes to byte r of
 * row c (at dst + c * dstStride). Interleaves bytes, then 2-, 4- and 8-byte units, in two
 * halves through the 256 bytes at `tmp` (fewer live vectors than V8 has registers).
 */
function transpose16(src: usize, srcStride: usize, dst: usize, dstStride: usize, tmp: usize): void {
  // Rows 4g .. 4g + 3 -> 4 vectors, each 4 columns x those 4 rows.
  for (let g: usize = 0; g < 4; g++) {
    const row = src + g * (srcStride << 2);
    const r0 = v128.load(row);
    const r1 = v128.load(row + srcStride);
    const r2 = v128.load(row + srcStride * 2);
    const r3 = v128.load(row + srcStride * 3);
    const a = low(r0, r1);
    const b = high(r0, r1);
    const c = low(r2, r3);
    const d = high(r2, r3);
    const at = tmp + (g << 6);
    v128.store(at, i16x8.shuffle(a, c, 0, 8, 1, 9, 2, 10, 3, 11));
    v128.store(at, i16x8.shuffle(a, c, 4, 12, 5, 13, 6, 14, 7, 15), 16);
    v128.store(at, i16x8.shuffle(b, d, 0, 8, 1, 9, 2, 10, 3, 11), 32);
    v128.store(at, i16x8.shuffle(b, d, 4, 12, 5, 13, 6, 14, 7, 15), 48);
  }
  // Columns 4q .. 4q + 3: join the 4 row groups.
  for (let q: usize = 0; q < 4; q++) {
    const at = tmp + (q << 4);
    const v0 = v128.load(at);
    const v1 = v128.load(at, 64);
    const v2 = v128.load(at, 128);
    const v3 = v128.load(at, 192);
    const e = i32x4.shuffle(v0, v1, 0, 4, 1, 5);
    const f = i32x4.shuffle(v0, v1, 2, 6, 3, 7);
    const g = i32x4.shuffle(v2, v3, 0, 4, 1, 5);
    const h = i32x4.shuffle(v2, v3, 2, 6, 3, 7);
    const col = dst + q * (dstStride << 2);
    v128.store(col, i64x2.shuffle(e, g, 0, 2));
    v128.store(col + dstStride, i64x2.shuffle(e, g, 1, 3));
    v128.store(col + dstStride * 2, i64x2.shuffle(f, h, 0, 2));
    v128.store(col + dstStride * 3, i64x2.shuffle(f, h, 1, 3));
  }
}

/**
 * Horizontal pass of `rows` rows (>= 16; row r at src + r * srcStride, RGB interleaved;
 * a crop is an offset start and the full image's stride) from `inWidth` (>= 16) to
 * `outWidth` (>= 16) pixels: output x reads input pixels start[x] .. + count[x] - 1, with the
 * vectors of prepareTaps (`pairs` per output). Output: with `planeStride` 0, interleaved
 * rows at out + y * outStride; otherwise planar, channel c of (y, x) at
 * out + c * planeStride + y * outStride + x. Work space: `tIn` inWidth * 48 bytes, `tOut`
 * outWidth * 48 bytes, `tmp` 256 bytes.
 */
export function horizontalStrips(
  src: usize,
  srcStride: i32,
  rows: i32,
  inWidth: i32,
  start: usize,
  count: usize,
  outWidth: i32,
  pairs: i32,
  wv: usize,
  out: usize,
  outStride: i32,
  planeStride: i32,
  tIn: usize,
  tOut: usize,
  tmp: usize,
): void {
  const inBytes = inWidth * 3;
  const outBytes = outWidth * 3;
  // Strips of 16 rows; the last one ends at the last row, overlapping the one before (its
  // rows come out the same twice).
  let y = 0;
  for (;;) {
    if (y + 16 > rows) y = rows - 16;
    const strip = src + <usize>(y * srcStride);
    for (let j = 0; ; j += 16) {
      if (j + 16 > inBytes) j = inBytes - 16;
      transpose16(strip + <usize>j, srcStride, tIn + ((<usize>j) << 4), 16, tmp);
      if (j + 16 >= inBytes) break;
    }
    weightedRows(tIn, 48, 48, start, count, outWidth, 0, pairs, wv, tOut, 48, 0);
    const outRow = out + <usize>(y * outStride);
    if (planeStride == 0) {
      for (let j = 0; ; j += 16) {
        if (j + 16 > outBytes) j = outBytes - 16;
        transpose16(tOut + ((<usize>j) << 4), 16, outRow + <usize>j, outStride, tmp);
        if (j + 16 >= outBytes) break;
      }
    } else {
      // Channel c of pixels x .. x + 15 is every third vector from byte column 3x + c.
      for (let c = 0; c < 3; c++) {
        const plane = outRow + <usize>(c * planeStride);
        for (let x = 0; ; x += 16) {
          if (x + 16 > outWidth) x = outWidth - 16;
          transpose16(tOut + ((<usize>(3 * x + c)) << 4), 48, plane + <usize>x, outStride, tmp);
          if (x + 16 >= outWidth) break;
        }
      }
    }
    if (y + 16 >= rows) break;
    y += 16;
  }
}

// ---------------------------------------------------------------------------------------
// Horizontal pass, direct: one output pixel per i32x4 [r, g, b, 0]. Each pair of taps loads
// 8 bytes r0 g0 b0 r1 g1 b1 . . and swizzles them to the i16 lanes [r0, r1, g0, g1, b0, b1,
// 0, 0], so a dot product with the prepareTaps vectors sums both taps of all three channels.
// ---------------------------------------------------------------------------------------

/** Bytes r0 g0 b0 r1 g1 b1 at `at` as i16 lanes [r0, r1, g0, g1, b0, b1, 0, 0]. */
function loadPair(at: usize): v128 {
  return i8x16.swizzle(
    v128.load64_zero(at),
    i8x16(0, -128, 3, -128, 1, -128, 4, -128, 2, -128, 5, -128, -128, -128, -128, -128),
  );
}

/**
 * Horizontal pass as horizontalStrips, for any size: every output x runs `pairs` tap pairs
 * (weight 0 past its count), reading up to 6 * pairs + 2 bytes from its first tap.
 */
export function horizontal(
  src: usize,
  srcStride: i32,
  rows: i32,
  start: usize,
  outWidth: i32,
  pairs: i32,
  wv: usize,
  out: usize,
  outStride: i32,
  planeStride: i32,
): void {
  const half = i32x4.splat(HALF);
  const zero = i32x4.splat(0);
  for (let y = 0; y < rows; y++) {
    const row = src + <usize>(y * srcStride);
    const outRow = out + <usize>(y * outStride);
    for (let x = 0; x < outWidth; x++) {
      let s = row + <usize>(load<i32>(start + ((<usize>x) << 2)) * 3);
      let w = wv + ((<usize>(x * pairs)) << 5);
      let h = zero;
      let l = half;
      for (let p = 0; p < pairs; p++) {
        const v = loadPair(s);
        h = i32x4.add(h, i32x4.dot_i16x8_s(v, v128.load(w)));
        l = i32x4.add(l, i32x4.dot_i16x8_s(v, v128.load(w, 16)));
        s += 6;
        w += 32;
      }
      const lanes = finish(h, l);
      const words = i16x8.narrow_i32x4_s(lanes, lanes);
      const bytes = i8x16.narrow_i16x8_u(words, words);
      if (planeStride != 0) {
        const at = outRow + <usize>x;
        store<u8>(at, i8x16.extract_lane_u(bytes, 0));
        store<u8>(at + <usize>planeStride, i8x16.extract_lane_u(bytes, 1));
        store<u8>(at + ((<usize>planeStride) << 1), i8x16.extract_lane_u(bytes, 2));
      } else {
        const at = outRow + <usize>(x * 3);
        store<u8>(at, i8x16.extract_lane_u(bytes, 0));
        store<u8>(at, i8x16.extract_lane_u(bytes, 1), 1);
        store<u8>(at, i8x16.extract_lane_u(bytes, 2), 2);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Interleaved RGB -> planar (HWC -> CHW), 16 pixels (48 bytes) at a time.
// ---------------------------------------------------------------------------------------

/** 16 pixels (48 bytes) at `from` into 16 bytes of each plane, at r, g and b. */
function planarChunk(from: usize, r: usize, g: usize, b: usize): void {
  const v0 = v128.load(from);
  const v1 = v128.load(from, 16);
  const v2 = v128.load(from, 32);
  const r01 = i8x16.shuffle(v0, v1, 0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0);
  const g01 = i8x16.shuffle(v0, v1, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 0, 0, 0, 0, 0);
  const b01 = i8x16.shuffle(v0, v1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 0, 0, 0, 0, 0);
  v128.store(r, i8x16.shuffle(r01, v2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29));
  v128.store(g, i8x16.shuffle(g01, v2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 18, 21, 24, 27, 30));
  v128.store(b, i8x16.shuffle(b01, v2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 19, 22, 25, 28, 31));
}

/**
 * Rows of `width` RGB pixels (row y at src + y * srcStride) into planes of width * height
 * bytes at out, out + plane, out + 2 * plane.
 */
export function toPlanar(src: usize, srcStride: i32, width: i32, height: i32, out: usize): void {
  const plane = <usize>(width * height);
  for (let y = 0; y < height; y++) {
    const row = src + <usize>(y * srcStride);
    const o = out + <usize>(y * width);
    if (width < 16) {
      for (let x = 0; x < width; x++) {
        const from = row + <usize>(x * 3);
        const at = o + <usize>x;
        store<u8>(at, load<u8>(from));
        store<u8>(at + plane, load<u8>(from, 1));
        store<u8>(at + (plane << 1), load<u8>(from, 2));
      }
      continue;
    }
    for (let x = 0; ; x += 16) {
      if (x + 16 > width) x = width - 16;
      const at = o + <usize>x;
      planarChunk(row + <usize>(x * 3), at, at + plane, at + (plane << 1));
      if (x + 16 >= width) break;
    }
  }
}
