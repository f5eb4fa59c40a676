// Host side of the vision graph: pads uint8 sub-images into one batch, builds the patch mask
// and the position ids (docs/model.md §2.1, §2.4), runs the session.
import type { InferenceSession } from 'onnxruntime-node';
import type { VisionConfig } from '../config/index.js';
import { paddedSize, type SubImage } from '../image/index.js';
import { makeTensor, readOutput } from '../onnx/index.js';
import { visionPositionIds } from './position-ids.js';
import { VISION_INPUTS, VISION_OUTPUT } from './vision-graph.js';

/** The graph's inputs for a batch of sub-images, as plain arrays. */
export interface VisionInputs {
  /** uint8 [n, 3, height, width], each sub-image top-left, zeros elsewhere. */
  pixels: Uint8Array;
  /** [n, height / p, width / p] (floored) 0/1: 1 where the patch is fully inside the image. */
  patchMask: Uint8Array;
  /** int64 [n, patches]; 0 on padded patches. */
  positionIds: BigInt64Array;
  count: number;
  height: number;
  width: number;
  patchRows: number;
  patchCols: number;
}

export interface EncodedImages {
  /** float32 [n, latents, text hidden], row-major. */
  data: Float32Array;
  dims: [count: number, latents: number, hidden: number];
}

type PatchGeometry = Pick<VisionConfig, 'patchSize' | 'numPatchesPerSide'>;

/**
 * Pads `subImages` bottom/right to the largest height and width. A patch is valid iff all its
 * pixels are real (the `== p²` rule of transformers >= 4.45), so a sub-image of h×w pixels
 * has the top-left ⌊h/p⌋×⌊w/p⌋ patches valid.
 */
export function visionInputs(
  subImages: readonly SubImage[],
  { patchSize, numPatchesPerSide }: PatchGeometry,
): VisionInputs {
  const { height, width } = paddedSize(subImages, 'encodeImages');
  for (const [i, sub] of subImages.entries()) {
    if (sub.height < patchSize || sub.width < patchSize) {
      throw new RangeError(
        `sub-image ${i} is ${sub.width}x${sub.height}, smaller than one ${patchSize}x${patchSize} patch`,
      );
    }
  }
  const count = subImages.length;
  const patchRows = Math.floor(height / patchSize);
  const patchCols = Math.floor(width / patchSize);
  const patchCount = patchRows * patchCols;
  const pixels = new Uint8Array(count * 3 * height * width);
  const patchMask = new Uint8Array(count * patchCount);
  const positionIds = new BigInt64Array(count * patchCount);
  for (const [i, sub] of subImages.entries()) {
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < sub.height; y++) {
        const from = (c * sub.height + y) * sub.width;
        pixels.set(sub.pixels.subarray(from, from + sub.width), ((i * 3 + c) * height + y) * width);
      }
    }
    const rows = Math.floor(sub.height / patchSize);
    const cols = Math.floor(sub.width / patchSize);
    for (let r = 0; r < rows; r++) {
      const o = i * patchCount + r * patchCols;
      patchMask.fill(1, o, o + cols);
    }
    positionIds.set(
      visionPositionIds({
        rows,
        cols,
        canvasRows: patchRows,
        canvasCols: patchCols,
        perSide: numPatchesPerSide,
      }),
      i * patchCount,
    );
  }
  return { pixels, patchMask, positionIds, count, height, width, patchRows, patchCols };
}

/**
 * Encodes a batch of sub-images with a session of buildVisionGraph's model: one
 * `[latents, text hidden]` block per sub-image, in input order.
 */
export async function encodeImages(
  session: InferenceSession,
  subImages: readonly SubImage[],
  geometry: PatchGeometry,
): Promise<EncodedImages> {
  const input = visionInputs(subImages, geometry);
  const { count, height, width, patchRows, patchCols } = input;
  const outputs = await session.run({
    [VISION_INPUTS.pixels]: makeTensor('uint8', input.pixels, [count, 3, height, width]),
    [VISION_INPUTS.patchMask]: makeTensor('bool', input.patchMask, [count, patchRows, patchCols]),
    [VISION_INPUTS.positionIds]: makeTensor('int64', input.positionIds, [
      count,
      patchRows * patchCols,
    ]),
  });
  const { data, dims } = readOutput(outputs, VISION_OUTPUT, 'float32');
  if (dims.length !== 3 || dims[0] !== count) {
    throw new Error(`${VISION_OUTPUT} has shape [${dims.join(', ')}], expected [${count}, _, _]`);
  }
  return { data, dims: [count, dims[1]!, dims[2]!] };
}
