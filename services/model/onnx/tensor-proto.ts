import {
  StringStringEntryProto,
  TensorProto,
  TensorProto_DataLocation,
} from '../../../proto/gen/onnx/onnx.js';
import { ELEMENT_TYPES, type ElementType, onnxDataType } from './element-type.js';

/** Where an external tensor's bytes lie: a byte range of a file, read in place by the runtime. */
export interface ExternalLocation {
  /**
   * The file, relative to the directory of the model file (ONNX resolves `location` that
   * way). Keep it inside that directory: ONNX Runtime refuses paths that leave it.
   */
  location: string;
  /** Absolute byte offset of the first element in the file. */
  offset: number;
  /** Byte count; must equal elements × element size. */
  length: number;
}

function elementCount(dims: readonly number[]): number {
  return dims.reduce((n, d) => n * d, 1);
}

function checkDims(name: string, dims: readonly number[]): void {
  if (!dims.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new TypeError(
      `tensor \`${name}\`: dims must be non-negative integers, got ${JSON.stringify(dims)}`,
    );
  }
}

/**
 * A tensor whose bytes are stored in the model (`raw_data`, little-endian row-major).
 * `data` is any typed array (float16/bfloat16 as their 16-bit patterns in a Uint16Array,
 * bool as a Uint8Array of 0/1) whose byte length matches `type` and `dims`.
 */
export function inlineTensor(
  name: string,
  type: ElementType,
  dims: readonly number[],
  data: ArrayBufferView,
): TensorProto {
  checkDims(name, dims);
  const expected = elementCount(dims) * ELEMENT_TYPES[type].size;
  if (data.byteLength !== expected) {
    throw new RangeError(
      `tensor \`${name}\`: ${type} ${JSON.stringify(dims)} needs ${expected} bytes, got ${data.byteLength}`,
    );
  }
  return TensorProto.fromPartial({
    name,
    dataType: onnxDataType(type),
    dims: [...dims],
    rawData: Buffer.from(data.buffer, data.byteOffset, data.byteLength),
  });
}

/**
 * A tensor whose bytes stay in another file (ONNX external data: `data_location = EXTERNAL`
 * with `location`, `offset`, `length`), e.g. a weight inside a safetensors shard, used
 * without copying it into the model.
 */
export function externalTensor(
  name: string,
  type: ElementType,
  dims: readonly number[],
  { location, offset, length }: ExternalLocation,
): TensorProto {
  checkDims(name, dims);
  const expected = elementCount(dims) * ELEMENT_TYPES[type].size;
  if (length !== expected) {
    throw new RangeError(
      `tensor \`${name}\`: ${type} ${JSON.stringify(dims)} needs ${expected} bytes, external length is ${length}`,
    );
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`tensor \`${name}\`: external offset must be >= 0, got ${offset}`);
  }
  if (location === '' || location.startsWith('/') || location.split(/[\\/]/).includes('..')) {
    throw new RangeError(
      `tensor \`${name}\`: external location must be a path inside the model's directory, got ${JSON.stringify(location)}`,
    );
  }
  const entry = (key: string, value: string) => StringStringEntryProto.fromPartial({ key, value });
  return TensorProto.fromPartial({
    name,
    dataType: onnxDataType(type),
    dims: [...dims],
    dataLocation: TensorProto_DataLocation.EXTERNAL,
    externalData: [
      entry('location', location),
      entry('offset', String(offset)),
      entry('length', String(length)),
    ],
  });
}
