export { positionBuckets, visionPositionIds } from './position-ids.js';
