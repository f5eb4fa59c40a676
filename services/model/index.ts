// What Idefics2 is, with no networking: image processing and checkpoint tensors.
export * from './image/index.js';
export * from './safetensors/index.js';
