// A tensor's bytes: read from a byte range of a file, and converted between float dtypes.
// Shared by `loupe convert` and the packed weights of quantized checkpoints.
import { readSync } from 'node:fs';
import type { SafetensorsDtype } from '../safetensors/index.js';
import { bfloat16ToFloat32, float16ToFloat32, float32sToFloat16 } from './half.js';

/**
 * `length` bytes at `offset` of `fd` into `buffer` (by default a new one, 8-byte aligned so
 * typed-array views over it are valid). Throws `onShort(message)` on a file that ends early.
 */
export function readRange(
  fd: number,
  offset: number,
  length: number,
  {
    buffer = Buffer.from(new ArrayBuffer(length)),
    onShort = (message: string) => new Error(message),
  }: { buffer?: Buffer; onShort?: (message: string) => Error } = {},
): Buffer {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buffer, done, length - done, offset + done);
    if (n === 0) throw onShort(`unexpected end of file reading ${length} bytes at ${offset}`);
    done += n;
  }
  return buffer;
}

/** A float tensor's values as float32 (a view of `source` when it is float32 already). */
export function readFloats(source: Buffer, from: SafetensorsDtype): Float32Array {
  if (from === 'F32')
    return new Float32Array(source.buffer, source.byteOffset, source.byteLength / 4);
  const bits = new Uint16Array(source.buffer, source.byteOffset, source.byteLength / 2);
  const widen = from === 'BF16' ? bfloat16ToFloat32 : float16ToFloat32;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = widen(bits[i]!);
  return out;
}

/** The elements of one float tensor in dtype `to` (F32 or F16); `source` itself when equal. */
export function convertTensor(
  source: Buffer,
  from: SafetensorsDtype,
  to: SafetensorsDtype,
): Uint8Array {
  if (from === to) return source;
  const values = readFloats(source, from);
  if (to === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return new Uint8Array(float32sToFloat16(values).buffer);
}
