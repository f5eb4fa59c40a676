export { expectedTensors } from './expected-tensors.js';
export {
  CheckpointError,
  openCheckpoint,
  WEIGHT_DTYPES,
  type Checkpoint,
  type TensorLocation,
} from './checkpoint.js';
