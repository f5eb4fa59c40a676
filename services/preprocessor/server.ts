// The Preprocessor gRPC service: validates the request, prices the image from its header
// (decode-cost.ts), runs it through the worker pool within the memory budget, and maps every
// failure to a status with a message naming its cause.
import {
  type PreprocessorInfo,
  type PreprocessRequest,
  type PreprocessResponse,
} from '../../proto/gen/loupe/v1/preprocessor.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import {
  invalidArgument,
  queueFull,
  QueueFullError,
  resourceExhausted,
  type HandlerContext,
  type MemoryBudget,
  type GrpcServer,
  failureReason,
} from '../runtime/index.js';
import { decodeCost, readImageHeader } from './decode-cost.js';
import type { PreprocessorMetrics } from './metrics.js';
import { PreprocessorServiceDefinition } from './wire.js';
import { BudgetExhaustedError, OverBudgetError, type PreprocessPool } from './pool.js';
import { ACCEPTED_FORMATS, type DecodeLimits, type ImageProcessorConfig } from '../model/index.js';

export interface PreprocessorHandlersOptions {
  pool: PreprocessPool;
  metrics: PreprocessorMetrics;
  processorConfig: ImageProcessorConfig;
  limits: DecodeLimits;
  /** The budget the pool reserves from; a request's bytes are reserved from it as they arrive. */
  budget: MemoryBudget;
}

/** Bytes of a PreprocessRequest around its image: tags, the length varint, `split`. */
export const REQUEST_FRAMING_BYTES = 16;
/** What a request's bytes cost while they arrive and are held (grpc-server.ts RequestLimit). */
const RECEIVE_COST_FACTOR = 2;

export function registerPreprocessor(
  server: GrpcServer,
  options: PreprocessorHandlersOptions,
): void {
  const { pool, metrics, processorConfig, limits, budget } = options;

  const preprocess = async (
    request: PreprocessRequest,
    ctx: HandlerContext,
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
      const image = request.image;
      const split = request.split ?? processorConfig.doImageSplitting;
      // Priced from the header; an image the worker will refuse from its header (not an
      // accepted format, over the pixel or frame limit) costs only its bytes.
      const header = await readImageHeader(image);
      const refused =
        header === undefined ||
        (header.width ?? 0) * (header.height ?? 0) > limits.maxPixels ||
        (header.pages ?? 1) > limits.maxFrames;
      const cost = refused
        ? image.byteLength
        : decodeCost(header, image.byteLength, processorConfig, split).bytes;
      const held = RECEIVE_COST_FACTOR * (image.byteLength + REQUEST_FRAMING_BYTES);
      let outcome;
      try {
        outcome = await pool.run({ image, split: request.split, cost, held }, ctx.signal);
      } catch (error) {
        if (error instanceof QueueFullError) throw queueFull(error.message);
        if (error instanceof BudgetExhaustedError)
          throw resourceExhausted(error.message, 'memory_budget');
        if (error instanceof OverBudgetError) {
          throw invalidArgument(
            `${error.message} (LOUPE_PREPROCESSOR_MEMORY_BUDGET_BYTES): send a smaller image${header ? ` than ${header.width}x${header.height}` : ''}`,
            'over_memory_budget',
          );
        }
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
      // The worker's buffers as they came (moved, not copied), and the hash it computed: the
      // response serializer (tensor-codec.ts) copies the pixels once, into the message.
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
        subImagesHash: Buffer.from(
          outcome.subImagesHash.buffer,
          outcome.subImagesHash.byteOffset,
          outcome.subImagesHash.byteLength,
        ),
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

  server.addService(
    'loupe.v1.Preprocessor',
    PreprocessorServiceDefinition,
    {
      preprocess: server.unary('Preprocess', preprocess),
      info: server.unary('Info', info),
    },
    {
      // An image over the byte limit is refused from the message's length prefix, before its
      // bytes are kept; one that fits has its bytes reserved from the budget as they arrive.
      preprocess: {
        maxBytes: limits.maxBytes + REQUEST_FRAMING_BYTES,
        budget,
        costFactor: RECEIVE_COST_FACTOR,
        tooLarge: (declared) =>
          invalidArgument(
            `\`image\` is over the limit of ${limits.maxBytes} bytes (the request declares ${declared})`,
            'too_large',
          ),
      },
      info: { maxBytes: 1024 },
    },
  );
}
