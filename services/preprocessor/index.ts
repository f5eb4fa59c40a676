// What the CLI may use of the preprocessor (services never import each other).
export {
  decodeLimits,
  loadPreprocessorConfig,
  preprocessorEnvSchema,
  type PreprocessorConfig,
} from './config.js';
