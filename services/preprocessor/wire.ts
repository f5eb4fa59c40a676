// The Preprocessor service definition the server registers: the generated one with the tensor
// codec (services/runtime/tensor-codec.ts) on Preprocess, so a response's pixels are copied
// once into the message, and the gateway reads them with the same codec without copying.
export { encodePreprocessResponse } from '../runtime/index.js';
export { PreprocessorCodecService as PreprocessorServiceDefinition } from '../runtime/index.js';
