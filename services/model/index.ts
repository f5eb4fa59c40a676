// What Idefics2 is, with no networking: configuration, checkpoint tensors, image processing.
export * from './checkpoint/index.js';
export * from './config/index.js';
export * from './convert/index.js';
export * from './image/index.js';
export * from './safetensors/index.js';
