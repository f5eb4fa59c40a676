// Protobuf encoding for messages that carry megabytes of tensor bytes. ts-proto's writer
// copies a `bytes` field once per level of nesting and again when it finishes (a 9.6 MB
// PreprocessResponse took ~20 ms); this one measures the message first, allocates once and
// copies each bulk field exactly once. Output is byte-for-byte what ts-proto writes (its
// tests compare the two), so peers decode it with the generated code.

/** One field of a message, in the order it is written. */
export type ProtoField =
  | { field: number; varint: number } // uint32, uint64 (< 2^53), enum, bool
  | { field: number; bytes: Uint8Array }
  | { field: number; string: string }
  | { field: number; packedVarints: readonly number[] }
  | { field: number; message: ProtoField[] };

const WIRE_VARINT = 0;
const WIRE_LEN = 2;

function varintSize(value: number): number {
  let size = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    size++;
  }
  return size;
}

function writeVarint(out: Buffer, offset: number, value: number): number {
  while (value >= 0x80) {
    out[offset++] = (value % 128) | 0x80;
    value = Math.floor(value / 128);
  }
  out[offset++] = value;
  return offset;
}

interface Sized {
  size: number;
  /** Body sizes of nested messages and packed fields, in write order. */
  nested: number[];
}

function measure(fields: readonly ProtoField[], nested: number[]): number {
  let size = 0;
  for (const f of fields) {
    const tagSize = varintSize(f.field * 8);
    if ('varint' in f) size += tagSize + varintSize(f.varint);
    else if ('bytes' in f) size += tagSize + varintSize(f.bytes.byteLength) + f.bytes.byteLength;
    else if ('string' in f) {
      const length = Buffer.byteLength(f.string, 'utf8');
      size += tagSize + varintSize(length) + length;
    } else if ('packedVarints' in f) {
      let body = 0;
      for (const v of f.packedVarints) body += varintSize(v);
      nested.push(body);
      size += tagSize + varintSize(body) + body;
    } else {
      const slot = nested.length;
      nested.push(0);
      const body = measure(f.message, nested);
      nested[slot] = body;
      size += tagSize + varintSize(body) + body;
    }
  }
  return size;
}

function write(
  out: Buffer,
  offset: number,
  fields: readonly ProtoField[],
  sized: Sized,
  cursor: { next: number },
): number {
  for (const f of fields) {
    if ('varint' in f) {
      offset = writeVarint(out, offset, f.field * 8 + WIRE_VARINT);
      offset = writeVarint(out, offset, f.varint);
    } else if ('bytes' in f) {
      offset = writeVarint(out, offset, f.field * 8 + WIRE_LEN);
      offset = writeVarint(out, offset, f.bytes.byteLength);
      out.set(f.bytes, offset);
      offset += f.bytes.byteLength;
    } else if ('string' in f) {
      offset = writeVarint(out, offset, f.field * 8 + WIRE_LEN);
      offset = writeVarint(out, offset, Buffer.byteLength(f.string, 'utf8'));
      offset += out.write(f.string, offset, 'utf8');
    } else if ('packedVarints' in f) {
      offset = writeVarint(out, offset, f.field * 8 + WIRE_LEN);
      offset = writeVarint(out, offset, sized.nested[cursor.next++]!);
      for (const v of f.packedVarints) offset = writeVarint(out, offset, v);
    } else {
      offset = writeVarint(out, offset, f.field * 8 + WIRE_LEN);
      offset = writeVarint(out, offset, sized.nested[cursor.next++]!);
      offset = write(out, offset, f.message, sized, cursor);
    }
  }
  return offset;
}

/** Encodes a message given as its fields (defaults already left out, as proto3 does). */
export function encodeFields(fields: readonly ProtoField[]): Buffer {
  const nested: number[] = [];
  const size = measure(fields, nested);
  const out = Buffer.allocUnsafe(size);
  const end = write(out, 0, fields, { size, nested }, { next: 0 });
  if (end !== size) throw new Error(`protobuf writer wrote ${end} bytes, measured ${size}`);
  return out;
}

/** Fields of a loupe.v1.Tensor (dtype 1, shape 2 packed, data 3), defaults left out. */
export function tensorFields(tensor: {
  dtype: number;
  shape: readonly number[];
  data: Uint8Array;
}): ProtoField[] {
  const fields: ProtoField[] = [];
  if (tensor.dtype !== 0) fields.push({ field: 1, varint: tensor.dtype });
  if (tensor.shape.length !== 0) fields.push({ field: 2, packedVarints: tensor.shape });
  if (tensor.data.byteLength !== 0) fields.push({ field: 3, bytes: tensor.data });
  return fields;
}
