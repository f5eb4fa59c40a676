export {
  type SafetensorsArray,
  type SafetensorsDtype,
  DTYPES as SAFETENSORS_DTYPES,
  elementCount,
  isSafetensorsDtype,
} from './dtype.js';
export {
  type SafetensorsEntry,
  type SafetensorsFile,
  type SafetensorsHeader,
  type SafetensorsTensor,
  parseSafetensorsHeader,
  readSafetensors,
  readSafetensorsHeader,
} from './read.js';
export {
  type TensorToWrite,
  type WriteSafetensorsOptions,
  encodeSafetensorsHeader,
  encodeSafetensorsLayout,
  type TensorLayout,
  writeSafetensors,
} from './write.js';
