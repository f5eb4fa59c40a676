export {
  type EncodedImages,
  encodeImages,
  type VisionInputs,
  visionInputs,
} from './encode-images.js';
export { positionBuckets, visionPositionIds } from './position-ids.js';
export {
  type BuildVisionGraphOptions,
  buildVisionGraph,
  VISION_INPUTS,
  VISION_OUTPUT,
} from './vision-graph.js';
