// What Idefics2 is, with no networking: configuration, checkpoint tensors, image processing,
// and the ONNX graph builder and sessions that run it.
export * from './checkpoint/index.js';
export * from './config/index.js';
export * from './convert/index.js';
export * from './image/index.js';
export * from './onnx/index.js';
export * from './quant/index.js';
export * from './safetensors/index.js';
export * from './text-processor/index.js';
export * from './language-model/index.js';
export * from './tiny/index.js';
export * from './vision/index.js';
