export { tinyModelConfig, type TinySize } from './tiny-configs.js';
export { tinyTokenizerDir, writeTinyModel, type TinyModelOptions } from './tiny-model.js';
