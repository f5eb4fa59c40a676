// Runs in a worker thread (piscina): decode, orient, convert, split and resize one image, and
// hash the sub-images (the encoder's cache key), so the gRPC thread never blocks on pixels.
// Errors about the image come back as values, because class identity and fields do not survive
// the thread boundary.
import { workerData } from 'node:worker_threads';
import { move, transferableSymbol, valueSymbol } from 'piscina';
import sharp from 'sharp';
import {
  ImageDecodeError,
  preprocessImage,
  type DecodeLimits,
  type ImageProcessorConfig,
} from '../model/index.js';
import { subImagesHash } from '../runtime/sub-images-hash.js';

export interface WorkerSetup {
  processorConfig: ImageProcessorConfig;
  limits: DecodeLimits;
}

export interface PreprocessTask {
  image: Uint8Array;
  split: boolean | undefined;
  /**
   * Set to 1 (Int32Array over a SharedArrayBuffer) when the caller has left: the image is not
   * started, or its result is dropped here rather than moved to a thread that would only let
   * it sit until its next garbage collection (an idle gRPC thread may not run one for long).
   */
  cancelled?: Int32Array;
}

const CALLER_LEFT: PreprocessOutcome = {
  ok: false,
  reason: 'cancelled',
  message: 'the caller left; the result was dropped',
};
const callerLeft = (task: PreprocessTask) =>
  task.cancelled !== undefined && Atomics.load(task.cancelled, 0) === 1;

export type PreprocessOutcome =
  | {
      ok: true;
      subImages: Array<{ height: number; width: number; pixels: Uint8Array }>;
      split: boolean;
      /** subImagesHash of `subImages` (PreprocessResponse.sub_images_hash). */
      subImagesHash: Uint8Array;
    }
  | { ok: false; reason: string; message: string };

const { processorConfig, limits } = workerData as WorkerSetup;
// Parallelism comes from the worker threads; one libvips thread each avoids oversubscription.
sharp.concurrency(1);
// No libvips operation cache: every image is new, and a cache would keep up to 50 MB of
// decoded pixels (more for a GIF's frames) outside the memory budget after each call.
sharp.cache(false);

export default async function preprocess(task: PreprocessTask): Promise<PreprocessOutcome> {
  if (callerLeft(task)) return CALLER_LEFT;
  try {
    const result = await preprocessImage(task.image, {
      config: processorConfig,
      split: task.split,
      limits,
    });
    if (callerLeft(task)) return CALLER_LEFT;
    const outcome: PreprocessOutcome = {
      ok: true,
      subImages: result.subImages,
      split: result.split,
      // Here rather than on the gateway's or this service's event loop; its own 32 bytes.
      subImagesHash: new Uint8Array(subImagesHash(result.subImages)),
    };
    // Moves the pixel buffers to the main thread instead of copying them.
    const buffers = [...new Set(result.subImages.map((s) => s.pixels.buffer as ArrayBuffer))];
    return move({
      [transferableSymbol]: buffers,
      [valueSymbol]: outcome,
    } as never) as unknown as PreprocessOutcome;
  } catch (error) {
    if (error instanceof ImageDecodeError)
      return { ok: false, reason: error.reason, message: error.message };
    throw error;
  }
}
