// Runs in a worker thread (piscina): decode, orient, convert, split and resize one image, so
// the gRPC thread never blocks on pixels. Errors about the image come back as values, because
// class identity and fields do not survive the thread boundary.
import { createHash } from 'node:crypto';
import { workerData } from 'node:worker_threads';
import { move, transferableSymbol, valueSymbol } from 'piscina';
import sharp from 'sharp';
import {
  ImageDecodeError,
  preprocessImage,
  type DecodeLimits,
  type ImageProcessorConfig,
} from '../model/index.js';

export interface WorkerSetup {
  processorConfig: ImageProcessorConfig;
  limits: DecodeLimits;
}

export interface PreprocessTask {
  image: Uint8Array;
  split: boolean | undefined;
}

export type PreprocessOutcome =
  | {
      ok: true;
      subImages: Array<{ height: number; width: number; pixels: Uint8Array }>;
      split: boolean;
      imageTokens: number;
      source: { format: string; height: number; width: number };
      contentHash: Uint8Array;
    }
  | { ok: false; reason: string; message: string };

const { processorConfig, limits } = workerData as WorkerSetup;
// Parallelism comes from the worker threads; one libvips thread each avoids oversubscription.
sharp.concurrency(1);

export default async function preprocess(task: PreprocessTask): Promise<PreprocessOutcome> {
  const contentHash = createHash('sha256').update(task.image).digest();
  try {
    const result = await preprocessImage(task.image, {
      config: processorConfig,
      split: task.split,
      limits,
    });
    const outcome: PreprocessOutcome = {
      ok: true,
      subImages: result.subImages,
      split: result.split,
      imageTokens: result.imageTokens,
      source: result.source,
      contentHash: new Uint8Array(
        contentHash.buffer,
        contentHash.byteOffset,
        contentHash.byteLength,
      ),
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
