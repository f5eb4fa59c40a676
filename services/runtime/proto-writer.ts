// Protobuf encoding for messages that carry megabytes of tensor bytes. The generated
// serializers pass over a `bytes` field three or four times (ts-proto's writer copies it into a
// buffer it regrows by doubling, copies that out when it finishes, and the generated
// serializer copies the result into a Buffer; a 9.6 MB PreprocessResponse took ~20 ms); this
// one measures the message first, allocates once and copies each bulk field exactly once.
// Output is byte-for-byte what ts-proto writes (tensor-codec.test.ts compares the two), so
// peers decode it with the generated code. tensor-codec.ts builds the stages' messages with it.

/** One field of a message, in the order it is written. */
export type ProtoField =
  | { field: number; varint: number } // uint32, uint64 (< 2^53), int32 and enum (also < 0), bool
  | { field: number; bytes: Uint8Array }
  | { field: number; string: string }
  | { field: number; packedVarints: readonly number[] }
  | { field: number; message: ProtoField[] }
  | { raw: Uint8Array }; // fields already encoded (another encoder's output), copied as they are

const WIRE_VARINT = 0;
const WIRE_LEN = 2;

function varintSize(value: number): number {
  // A negative int32 or enum is written as its 64-bit two's complement: 10 bytes.
  if (value < 0) return 10;
  let size = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    size++;
  }
  return size;
}

function writeVarint(out: Buffer, offset: number, value: number): number {
  if (value < 0) {
    let bits = BigInt.asUintN(64, BigInt(value));
    while (bits >= 0x80n) {
      out[offset++] = Number(bits & 0x7fn) | 0x80;
      bits >>= 7n;
    }
    out[offset++] = Number(bits);
    return offset;
  }
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
    if ('raw' in f) {
      size += f.raw.byteLength;
      continue;
    }
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
    if ('raw' in f) {
      out.set(f.raw, offset);
      offset += f.raw.byteLength;
    } else if ('varint' in f) {
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
