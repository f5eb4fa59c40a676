// The Preprocessor gRPC service: validates the request, runs the image through the worker pool
// and maps every failure to a status with a message naming its cause.
import {
  type PreprocessorInfo,
  type PreprocessRequest,
  type PreprocessResponse,
} from '../../proto/gen/loupe/v1/preprocessor.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import {
  invalidArgument,
  resourceExhausted,
  type CallContext,
  type GrpcServer,
  failureReason,
} from '../runtime/index.js';
import type { PreprocessorMetrics } from './metrics.js';
import { PreprocessorServiceDefinition } from './wire.js';
import { QueueFullError, type PreprocessPool } from './pool.js';
import { ACCEPTED_FORMATS, type DecodeLimits, type ImageProcessorConfig } from '../model/index.js';

export interface PreprocessorHandlersOptions {
  pool: PreprocessPool;
  metrics: PreprocessorMetrics;
  processorConfig: ImageProcessorConfig;
  limits: DecodeLimits;
}

export function registerPreprocessor(
  server: GrpcServer,
  options: PreprocessorHandlersOptions,
): void {
  const { pool, metrics, processorConfig, limits } = options;

  const preprocess = async (
    request: PreprocessRequest,
    ctx: CallContext,
  ): Promise<PreprocessResponse> => {
    const started = performance.now();
    metrics.inFlight.inc();
    metrics.inputBytes.inc(request.image.byteLength);
    try {
      if (request.image.byteLength === 0) throw invalidArgument('`image` is empty', 'empty');
      if (request.image.byteLength > limits.maxBytes) {
        throw invalidArgument(
          `\`image\` is ${request.image.byteLength} bytes, over the limit of ${limits.maxBytes}`,
          'too_large',
        );
      }
      // A private copy: its buffer moves to the worker thread without detaching gRPC's buffer.
      const image = new Uint8Array(request.image);
      let outcome;
      try {
        outcome = await pool.run({ image, split: request.split }, ctx.signal);
      } catch (error) {
        if (error instanceof QueueFullError) throw resourceExhausted(error.message, 'queue_full');
        if (ctx.signal.aborted) throw ctx.signal.reason;
        throw error;
      }
      if (!outcome.ok) throw invalidArgument(outcome.message, outcome.reason);

      metrics.images.inc({ split: String(outcome.split) });
      metrics.subImages.inc(outcome.subImages.length);
      metrics.latency.observe(
        { split: String(outcome.split) },
        (performance.now() - started) / 1000,
      );
      return {
        subImages: outcome.subImages.map(({ height, width, pixels }) => ({
          height,
          width,
          pixels: {
            dtype: Dtype.DTYPE_UINT8,
            shape: [3, height, width],
            data: Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength),
          },
        })),
        split: outcome.split,
        imageTokens: outcome.imageTokens,
        tokensPerSubImage: processorConfig.imageSeqLen,
        source: outcome.source,
        contentHash: Buffer.from(outcome.contentHash),
      };
    } catch (error) {
      metrics.failures.inc({ reason: failureReason(error) });
      throw error;
    } finally {
      metrics.inFlight.dec();
    }
  };

  const info = async (): Promise<PreprocessorInfo> => ({
    defaultSplit: processorConfig.doImageSplitting,
    tokensPerSubImage: processorConfig.imageSeqLen,
    shortestEdge: processorConfig.shortestEdge,
    longestEdge: processorConfig.longestEdge,
    maxImageBytes: limits.maxBytes,
    maxImagePixels: limits.maxPixels,
    maxFrames: limits.maxFrames,
    formats: [...ACCEPTED_FORMATS],
  });

  server.addService('loupe.v1.Preprocessor', PreprocessorServiceDefinition, {
    preprocess: server.unary('Preprocess', preprocess),
    info: server.unary('Info', info),
  });
}
