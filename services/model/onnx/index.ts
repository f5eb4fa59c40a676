// Building ONNX graphs in TypeScript and running them with onnxruntime-node.
export { type AttributeValue, attributeProto } from './attribute.js';
/** Typed attribute values: `attr.int(1)`, `attr.float(1e-5)`, `attr.ints([0, 2, 1, 3])`, ... */
export * as attr from './attribute.js';
export {
  type ElementType,
  ELEMENT_TYPES,
  elementTypeOfSafetensors,
  type GraphFloatType,
  graphFloatType,
  onnxDataType,
  safetensorsDtypeOf,
} from './element-type.js';
export {
  DEFAULT_OPSETS,
  type Dim,
  type Domain,
  GraphBuilder,
  type GraphBuilderOptions,
  type NodeSpec,
} from './graph-builder.js';
export { CheckpointWeights, externalDataDir, type OnnxModel } from './checkpoint-weights.js';
export {
  createSession,
  type ExecutionProvider,
  type GraphOptimizationLevel,
  makeTensor,
  readOutput,
  type SessionOptions,
  type TensorData,
} from './session.js';
export { type ExternalLocation, externalTensor, inlineTensor } from './tensor-proto.js';
