import type { SafetensorsDtype } from '../safetensors/index.js';
import { TensorProto_DataType } from '../../../proto/gen/onnx/onnx.js';

/**
 * Element types a Loupe graph uses, spelled as onnxruntime-node spells tensor types, so one
 * name serves the graph (ONNX `TensorProto.DataType`) and the session (`Tensor.type`).
 */
export type ElementType =
  | 'float32'
  | 'float16'
  | 'bfloat16'
  | 'float64'
  | 'int64'
  | 'int32'
  | 'int16'
  | 'int8'
  | 'uint64'
  | 'uint32'
  | 'uint16'
  | 'uint8'
  | 'bool';

interface ElementInfo {
  onnx: TensorProto_DataType;
  /** Bytes per element. */
  size: number;
}

export const ELEMENT_TYPES: Readonly<Record<ElementType, ElementInfo>> = {
  float32: { onnx: TensorProto_DataType.FLOAT, size: 4 },
  float16: { onnx: TensorProto_DataType.FLOAT16, size: 2 },
  bfloat16: { onnx: TensorProto_DataType.BFLOAT16, size: 2 },
  float64: { onnx: TensorProto_DataType.DOUBLE, size: 8 },
  int64: { onnx: TensorProto_DataType.INT64, size: 8 },
  int32: { onnx: TensorProto_DataType.INT32, size: 4 },
  int16: { onnx: TensorProto_DataType.INT16, size: 2 },
  int8: { onnx: TensorProto_DataType.INT8, size: 1 },
  uint64: { onnx: TensorProto_DataType.UINT64, size: 8 },
  uint32: { onnx: TensorProto_DataType.UINT32, size: 4 },
  uint16: { onnx: TensorProto_DataType.UINT16, size: 2 },
  uint8: { onnx: TensorProto_DataType.UINT8, size: 1 },
  bool: { onnx: TensorProto_DataType.BOOL, size: 1 },
};

const FROM_SAFETENSORS: Readonly<Record<SafetensorsDtype, ElementType>> = {
  F64: 'float64',
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  I64: 'int64',
  I32: 'int32',
  I16: 'int16',
  I8: 'int8',
  U64: 'uint64',
  U32: 'uint32',
  U16: 'uint16',
  U8: 'uint8',
  BOOL: 'bool',
};

/** The element type of a safetensors dtype (same bytes, so a tensor can be used in place). */
export function elementTypeOfSafetensors(dtype: SafetensorsDtype): ElementType {
  return FROM_SAFETENSORS[dtype];
}

/** The ONNX `TensorProto.DataType` number of an element type. */
export function onnxDataType(type: ElementType): TensorProto_DataType {
  return ELEMENT_TYPES[type].onnx;
}

/** Float element types the Loupe graphs compute in. */
export type GraphFloatType = 'float32' | 'float16';

/**
 * The float type a graph built from weights of `dtype` computes in: float32 for F32 weights,
 * float16 for F16 ones (the CUDA provider's type; make one with `loupe convert --dtype
 * float16`). bfloat16 and the rest are refused: convert them first.
 */
export function graphFloatType(dtype: SafetensorsDtype): GraphFloatType {
  if (dtype === 'F32') return 'float32';
  if (dtype === 'F16') return 'float16';
  throw new Error(
    `the graphs run float32 or float16 weights, not ${dtype}; rewrite the checkpoint with \`loupe convert --dtype float32\` (CPU) or \`--dtype float16\` (CUDA)`,
  );
}

/** The safetensors dtype of a graph float type. */
export function safetensorsDtypeOf(type: GraphFloatType): SafetensorsDtype {
  return type === 'float32' ? 'F32' : 'F16';
}
