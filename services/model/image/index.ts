// Idefics2 image processing: the reference's rules (transformers' Idefics2ImageProcessor
// after load_image), as pure functions usable in-process and in worker threads.
export {
  type CropResize,
  type PassOrder,
  type ResizeOptions,
  bilinearBackend,
  resizeBilinear,
  resizeBilinearChw,
  resizeBilinearJs,
  resizeCropsChw,
  verticalPassFirst,
} from './bilinear.js';
export { type AxisCoefficients, bilinearCoefficients } from './bilinear-coefficients.js';
export { type DecodeLimits, type DecodedImage, decodeImage } from './decode.js';
export { ImageDecodeError, type ImageDecodeReason } from './decode-error.js';
export { applyOrientation } from './orientation.js';
export {
  type PreprocessOptions,
  type PreprocessedImage,
  preprocessImage,
  processGeometry,
} from './pipeline.js';
export {
  type PixelValues,
  type SubImage,
  paddedSize,
  pixelLookupTables,
  toPixelValues,
} from './pixel-values.js';
export {
  DEFAULT_IMAGE_PROCESSOR_CONFIG,
  type ImageProcessorConfig,
  loadImageProcessorConfig,
  parsePreprocessorConfig,
  processorConfigFiles,
} from './processor-config.js';
export { type ResizeBounds, type Size, resizeOutputSize } from './resize-rule.js';
export { type RgbImage, createRgbImage, toChw } from './rgb-image.js';
export { ACCEPTED_FORMATS, type ImageFormat, sniffImageFormat } from './sniff-format.js';
export { cropImage, splitImage } from './split.js';
