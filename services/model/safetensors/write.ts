import { closeSync, openSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { DTYPES, elementCount, isSafetensorsDtype, type SafetensorsDtype } from './dtype.js';

export interface TensorToWrite {
  dtype: SafetensorsDtype;
  /** Dimensions, outermost first; [] for a scalar. */
  shape: readonly number[];
  /** Little-endian element bytes, row-major; any typed array or DataView over them. */
  data: ArrayBufferView;
}

export interface WriteSafetensorsOptions {
  /** Free-form string pairs stored under `__metadata__` (e.g. `{ format: 'pt' }`). */
  metadata?: Record<string, string>;
}

/**
 * Encodes tensors in the safetensors layout:
 *
 * ```
 * u64 LE  N  | N bytes: JSON header, padded with spaces to a multiple of 8 | tensor bytes
 * header: { "<name>": { "dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end] }, ...,
 *           "__metadata__": { ... } }        offsets relative to the start of tensor bytes
 * ```
 *
 * Tensors are laid out by decreasing element size (insertion order among equals), so with
 * the 8-aligned data start every tensor is aligned for a zero-copy typed-array view, and the
 * data is contiguous with no gaps, as the format requires.
 */
export function encodeSafetensorsHeader(
  tensors: Readonly<Record<string, TensorToWrite>>,
  options: WriteSafetensorsOptions = {},
): { header: Buffer; order: string[]; dataLength: number } {
  for (const [name, t] of Object.entries(tensors)) {
    if (!isSafetensorsDtype(t.dtype) || !Array.isArray(t.shape)) continue; // reported below
    const expected = elementCount(t.shape) * DTYPES[t.dtype].size;
    if (t.data.byteLength !== expected) {
      throw new RangeError(
        `tensor \`${name}\`: ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected} bytes, got ${t.data.byteLength}`,
      );
    }
  }
  return encodeSafetensorsLayout(tensors, options);
}

/** A tensor's name, dtype and shape: enough to lay out a file before any data exists. */
export interface TensorLayout {
  dtype: SafetensorsDtype;
  shape: readonly number[];
}

/**
 * The header for tensors of these dtypes and shapes, and the order their data follows it in
 * (largest element size first, so every tensor is aligned).
 */
export function encodeSafetensorsLayout(
  tensors: Readonly<Record<string, TensorLayout>>,
  { metadata }: WriteSafetensorsOptions = {},
): { header: Buffer; order: string[]; dataLength: number } {
  const names = Object.keys(tensors);
  const json: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') {
        throw new TypeError(
          `safetensors metadata \`${key}\` must be a string, got ${JSON.stringify(value)}`,
        );
      }
    }
    json['__metadata__'] = metadata;
  }
  for (const name of names) {
    const t = tensors[name]!;
    if (name === '__metadata__')
      throw new TypeError('`__metadata__` is reserved, not a tensor name');
    if (!isSafetensorsDtype(t.dtype)) {
      throw new TypeError(`tensor \`${name}\`: unknown dtype ${JSON.stringify(t.dtype)}`);
    }
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new TypeError(
        `tensor \`${name}\`: shape must be non-negative integers, got ${JSON.stringify(t.shape)}`,
      );
    }
  }
  const order = names
    .map((name, i) => ({ name, i, size: DTYPES[tensors[name]!.dtype].size }))
    .sort((a, b) => b.size - a.size || a.i - b.i)
    .map((e) => e.name);
  const offsets = new Map<string, [number, number]>();
  let offset = 0;
  for (const name of order) {
    const t = tensors[name]!;
    const end = offset + elementCount(t.shape) * DTYPES[t.dtype].size;
    offsets.set(name, [offset, end]);
    offset = end;
  }
  for (const name of names) {
    const t = tensors[name]!;
    json[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: offsets.get(name) };
  }
  const text = Buffer.from(JSON.stringify(json), 'utf8');
  const padded = Math.ceil(text.length / 8) * 8;
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  text.copy(header, 8);
  return { header, order, dataLength: offset };
}

/**
 * Writes `tensors` to a safetensors file at `path` (replacing it). Tensor bytes are written
 * as they are in memory, which is little-endian on every platform Node supports here.
 */
export function writeSafetensors(
  path: string,
  tensors: Readonly<Record<string, TensorToWrite>>,
  options: WriteSafetensorsOptions = {},
): void {
  if (endianness() !== 'LE') throw new Error('writeSafetensors needs a little-endian host');
  const { header, order } = encodeSafetensorsHeader(tensors, options);
  const fd = openSync(path, 'w');
  try {
    writeAll(fd, header);
    for (const name of order) {
      const { data } = tensors[name]!;
      writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done);
}
