/** Element types of the safetensors format, as spelled in its header. */
export type SafetensorsDtype =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL';

/**
 * The typed array each dtype is read into. Half-precision floats (F16, BF16) have no
 * JavaScript array type on Node 20, so they come back as their raw 16-bit patterns.
 */
export type SafetensorsArray =
  | Float64Array
  | Float32Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Uint16Array
  | Int8Array
  | Uint8Array;

interface DtypeInfo {
  /** Bytes per element. */
  size: number;
  /** Builds a view of `length` elements at `byteOffset` (which must be aligned to `size`). */
  view: (buffer: ArrayBufferLike, byteOffset: number, length: number) => SafetensorsArray;
}

export const DTYPES: Readonly<Record<SafetensorsDtype, DtypeInfo>> = {
  F64: { size: 8, view: (b, o, n) => new Float64Array(b, o, n) },
  F32: { size: 4, view: (b, o, n) => new Float32Array(b, o, n) },
  F16: { size: 2, view: (b, o, n) => new Uint16Array(b, o, n) },
  BF16: { size: 2, view: (b, o, n) => new Uint16Array(b, o, n) },
  I64: { size: 8, view: (b, o, n) => new BigInt64Array(b, o, n) },
  I32: { size: 4, view: (b, o, n) => new Int32Array(b, o, n) },
  I16: { size: 2, view: (b, o, n) => new Int16Array(b, o, n) },
  I8: { size: 1, view: (b, o, n) => new Int8Array(b, o, n) },
  U64: { size: 8, view: (b, o, n) => new BigUint64Array(b, o, n) },
  U32: { size: 4, view: (b, o, n) => new Uint32Array(b, o, n) },
  U16: { size: 2, view: (b, o, n) => new Uint16Array(b, o, n) },
  U8: { size: 1, view: (b, o, n) => new Uint8Array(b, o, n) },
  BOOL: { size: 1, view: (b, o, n) => new Uint8Array(b, o, n) },
};

export function isSafetensorsDtype(value: unknown): value is SafetensorsDtype {
  return typeof value === 'string' && Object.hasOwn(DTYPES, value);
}

/** Number of elements of a shape; [] is a scalar (1 element). */
export function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}
