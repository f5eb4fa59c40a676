import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import {
  DTYPES,
  elementCount,
  isSafetensorsDtype,
  type SafetensorsArray,
  type SafetensorsDtype,
} from './dtype.js';

/** The same bound as the reference `safetensors` package. */
const MAX_HEADER_BYTES = 100_000_000;

/** Where one tensor lives in a safetensors file. */
export interface SafetensorsEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the first element in the file (e.g. for ONNX external data). */
  offset: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  path: string;
  /** Absolute offset of the tensor data section: 8 + header length. */
  dataOffset: number;
  /** `__metadata__`, or {} when absent. */
  metadata: Record<string, string>;
  /** In header order. */
  tensors: Record<string, SafetensorsEntry>;
}

export interface SafetensorsTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** A view into the file's bytes when aligned, else a copy. F16/BF16: raw 16-bit patterns. */
  data: SafetensorsArray;
}

/** The tensors of a file by name, in header order, plus its `__metadata__` ({} if none). */
export interface SafetensorsFile extends ReadonlyMap<string, SafetensorsTensor> {
  readonly metadata: Record<string, string>;
}

function fail(path: string, message: string): never {
  throw new Error(`${path}: ${message}`);
}

/**
 * Parses and validates a header: JSON object of tensors plus optional `__metadata__`, each
 * tensor's dtype, shape and byte count agreeing, and the tensors' byte ranges tiling the
 * data section exactly (no gap, no overlap, nothing left over), as the reference requires.
 */
export function parseSafetensorsHeader(
  headerBytes: Uint8Array,
  fileSize: number,
  path: string,
): SafetensorsHeader {
  if (fileSize < 8) fail(path, `file is ${fileSize} bytes, too short for a safetensors header`);
  const view = new DataView(headerBytes.buffer, headerBytes.byteOffset, headerBytes.byteLength);
  const declared = view.getBigUint64(0, true);
  if (declared > BigInt(MAX_HEADER_BYTES) || Number(declared) > fileSize - 8) {
    fail(
      path,
      `header length ${declared} does not fit the file (${fileSize} bytes, limit ${MAX_HEADER_BYTES})`,
    );
  }
  const headerLength = Number(declared);
  if (headerBytes.length < 8 + headerLength) fail(path, 'header is cut short');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(
      headerBytes.subarray(8, 8 + headerLength),
    );
  } catch {
    fail(path, 'header is not valid UTF-8');
  }
  if (!text.startsWith('{'))
    fail(path, `header must start with '{', got ${JSON.stringify(text.slice(0, 16))}`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    fail(path, `header is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    fail(path, 'header must be a JSON object');

  const dataOffset = 8 + headerLength;
  const dataLength = fileSize - dataOffset;
  const metadata: Record<string, string> = {};
  const tensors: Record<string, SafetensorsEntry> = {};
  const ranges: Array<{ name: string; begin: number; end: number }> = [];
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) {
        fail(path, `\`__metadata__\` must be an object of strings, got ${JSON.stringify(value)}`);
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== 'string')
          fail(path, `\`__metadata__.${k}\` must be a string, got ${JSON.stringify(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    const where = `tensor \`${name}\``;
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      fail(path, `${where} must be an object, got ${JSON.stringify(value)}`);
    }
    const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
    if (!isSafetensorsDtype(dtype)) fail(path, `${where}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(path, `${where}: shape must be non-negative integers, got ${JSON.stringify(shape)}`);
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      fail(
        path,
        `${where}: data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(offsets)}`,
      );
    }
    const [begin, end] = offsets as [number, number];
    const expected = elementCount(shape as number[]) * DTYPES[dtype].size;
    if (end - begin !== expected) {
      fail(
        path,
        `${where}: ${dtype} ${JSON.stringify(shape)} needs ${expected} bytes, data_offsets span ${end - begin}`,
      );
    }
    if (end > dataLength) {
      fail(
        path,
        `${where}: data_offsets ${JSON.stringify(offsets)} run past the end of the data (${dataLength} bytes)`,
      );
    }
    tensors[name] = {
      dtype,
      shape: [...(shape as number[])],
      offset: dataOffset + begin,
      byteLength: expected,
    };
    ranges.push({ name, begin, end });
  }
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const r of ranges) {
    if (r.begin !== cursor) {
      fail(
        path,
        `tensor \`${r.name}\` starts at data byte ${r.begin}, expected ${cursor} (tensors must be contiguous and not overlap)`,
      );
    }
    cursor = r.end;
  }
  if (cursor !== dataLength) {
    fail(
      path,
      `tensors cover ${cursor} bytes of data but the file holds ${dataLength} after the header`,
    );
  }
  return { path, dataOffset, metadata, tensors };
}

/** Reads and validates only the header of a safetensors file; no tensor data is read. */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const fd = openSync(path, 'r');
  try {
    const fileSize = fstatSync(fd).size;
    const prefix = Buffer.alloc(Math.min(8, fileSize));
    readSync(fd, prefix, 0, prefix.length, 0);
    if (fileSize < 8) return parseSafetensorsHeader(prefix, fileSize, path);
    const declared = prefix.readBigUInt64LE(0);
    const headerLength =
      declared <= BigInt(Math.min(MAX_HEADER_BYTES, fileSize - 8)) ? Number(declared) : 0;
    const bytes = Buffer.alloc(8 + headerLength);
    prefix.copy(bytes);
    let done = 0;
    while (done < headerLength) {
      const n = readSync(fd, bytes, 8 + done, headerLength - done, 8 + done);
      if (n === 0) break;
      done += n;
    }
    return parseSafetensorsHeader(bytes, fileSize, path);
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads a whole safetensors file into memory and returns typed-array views of its tensors:
 * zero-copy where a tensor's offset is aligned to its element size (always, for files this
 * package or the reference writes), a copy otherwise. For multi-gigabyte shards, use
 * readSafetensorsHeader and read the byte ranges instead.
 */
export function readSafetensors(path: string): SafetensorsFile {
  if (endianness() !== 'LE') throw new Error('readSafetensors needs a little-endian host');
  const bytes = readFileSync(path);
  const header = parseSafetensorsHeader(bytes, bytes.length, path);
  const tensors = new Map<string, SafetensorsTensor>();
  for (const [name, entry] of Object.entries(header.tensors)) {
    const { size, view } = DTYPES[entry.dtype];
    const start = bytes.byteOffset + entry.offset;
    const length = entry.byteLength / size;
    const data =
      start % size === 0
        ? view(bytes.buffer, start, length)
        : view(bytes.buffer.slice(start, start + entry.byteLength), 0, length);
    tensors.set(name, { dtype: entry.dtype, shape: entry.shape, data });
  }
  return Object.assign(tensors, { metadata: header.metadata });
}
