// What `loupe generate` and `loupe encode` share: a checkpoint's image processing and vision
// encoder, run in-process.
import { readFileSync, statSync } from 'node:fs';
import {
  buildVisionGraph,
  createSession,
  encodeImages,
  ImageDecodeError,
  loadImageProcessorConfig,
  openCheckpoint,
  preprocessImage,
  type Checkpoint,
  type ImageProcessorConfig,
  type SubImage,
} from '../model/index.js';
import { decodeLimits, loadPreprocessorConfig } from '../preprocessor/index.js';
import { CliError } from './cli-error.js';

export function openModel(dir: string): {
  checkpoint: Checkpoint;
  processor: ImageProcessorConfig;
} {
  try {
    return { checkpoint: openCheckpoint(dir), processor: loadImageProcessorConfig(dir) };
  } catch (error) {
    throw new CliError((error as Error).message);
  }
}

/** Each image's sub-images, as the preprocessor service makes them (same limits). */
export async function loadImages(
  paths: readonly string[],
  processor: ImageProcessorConfig,
  split: boolean | undefined,
): Promise<Array<{ subImages: SubImage[]; split: boolean }>> {
  const limits = decodeLimits(loadPreprocessorConfig());
  return Promise.all(
    paths.map(async (path) => {
      let bytes: Buffer;
      try {
        if (statSync(path).size > limits.maxBytes) {
          throw new CliError(
            `${path} is over the limit of ${limits.maxBytes} bytes (LOUPE_PREPROCESSOR_MAX_IMAGE_BYTES)`,
          );
        }
        bytes = readFileSync(path);
      } catch (error) {
        if (error instanceof CliError) throw error;
        throw new CliError(`cannot read --image ${path}: ${(error as Error).message}`);
      }
      try {
        const result = await preprocessImage(bytes, { config: processor, split, limits });
        return { subImages: result.subImages, split: result.split };
      } catch (error) {
        if (error instanceof ImageDecodeError) throw new CliError(`${path}: ${error.message}`);
        throw error;
      }
    }),
  );
}

/** The vision + connector output for all sub-images, in order: [sub-images, latents, hidden]. */
export async function encodeSubImages(checkpoint: Checkpoint, subImages: readonly SubImage[]) {
  const session = await createSession(buildVisionGraph(checkpoint));
  try {
    return await encodeImages(session, subImages, checkpoint.config.vision);
  } finally {
    await session.release();
  }
}
