export { tinyModelConfig, type TinySize } from './tiny-configs.js';
export {
  seededUniform,
  tinyTokenizerDir,
  writeTinyModel,
  type TinyModelOptions,
} from './tiny-model.js';
