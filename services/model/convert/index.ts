export {
  convertCheckpoint,
  ConvertError,
  type ConvertOptions,
  type ConvertSummary,
  type QuantizeOptions,
  type TargetDtype,
} from './convert-checkpoint.js';
export {
  bfloat16ToFloat32,
  float16ToFloat32,
  float32ToFloat16,
  float32sToFloat16,
} from './half.js';
