// GPTQ-quantized weights: the checkpoint format (docs/quantization.md), round-to-nearest
// quantization for `loupe convert --bits`, and the repacking into ONNX Runtime's MatMulNBits.
export {
  checkGptqShape,
  dequantizeGptq,
  GptqLayoutError,
  type GptqShape,
  type GptqTensors,
  type MatMulNBitsWeights,
  quantizeGptq,
  repackForMatMulNBits,
} from './gptq.js';
export {
  type PackedTensor,
  type PackedGraph,
  type PackedWeights,
  matMulNBits,
  packedInitializer,
  packedNames,
  packTextWeights,
  packWeights,
  resolveWeightCacheDir,
  WeightCacheError,
} from './packed-weights.js';
export {
  GROUP_SIZES,
  type GroupSize,
  gptqShapes,
  packFactor,
  parseQuantizationConfig,
  type QuantBits,
  type QuantizationConfig,
  QuantizationConfigError,
  quantizationConfigJson,
  type QuantizedLinearSpec,
  quantizedLinears,
  textLinears,
  visionLinears,
  TEXT_BLOCKS,
  TEXT_PROJECTIONS,
} from './quantization-config.js';
