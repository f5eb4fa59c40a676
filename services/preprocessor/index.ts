export {
  loadPreprocessorConfig,
  preprocessorEnvSchema,
  type PreprocessorConfig,
} from './config.js';
export { SUPPORTED_FORMATS } from './server.js';
