// The Encoder gRPC service: validates sub-images, answers repeats from the cache, joins
// concurrent requests for the same image, and queues the rest for the batcher.
//
// The cache (and the joining of concurrent requests) is keyed by the encoder's own SHA-256 of
// the sub-images it encodes (`subImagesHash`); a caller's `content_hash` is a claim checked
// against it, and a request whose hash does not match its bytes is refused before any work, so
// no caller can store embeddings under a hash other than that of the pixels they came from.
import type {
  EncodeRequest,
  EncodeResponse,
  EncoderInfo,
  LookupRequest,
} from '../../proto/gen/loupe/v1/encoder.js';
import { Dtype, type SubImage as WireSubImage } from '../../proto/gen/loupe/v1/tensor.js';
import type { SubImage } from '../model/index.js';
import {
  GrpcStatus,
  invalidArgument,
  MemoryBudget,
  notFound,
  queueFull,
  QueueFullError,
  ServiceError,
  unavailable,
  type HandlerContext,
  type GrpcServer,
  failureReason,
  subImagesHash,
} from '../runtime/index.js';
import { OverBudgetError, type Batcher } from './batcher.js';
import { EmbeddingCache, type CachedEmbeddings } from './cache.js';
import type { EncoderMetrics } from './metrics.js';
import type { EmbeddingDtype, RunnerInfo } from './runner.js';
import { EncoderServiceDefinition } from './wire.js';

export interface EncoderLimits {
  maxSubImages: number;
  maxBatch: number;
  maxQueue: number;
  /** Most padded pixels in one model run (the batcher's bound; LOUPE_ENCODER_MAX_BATCH_PIXELS). */
  maxBatchPixels?: number;
}

/** Protobuf bytes around one sub-image's pixels: its tags, height, width, dtype and shape. */
const SUB_IMAGE_FRAMING_BYTES = 128;

/**
 * The largest EncodeRequest a caller within the limits can send: `maxSubImages` sub-images of
 * the model's largest size (3 × maxSide² bytes each, with their framing), a hash and flags.
 */
export function maxEncodeRequestBytes({ maxSubImages }: EncoderLimits, { maxSide }: RunnerInfo) {
  return maxSubImages * (3 * maxSide * maxSide + SUB_IMAGE_FRAMING_BYTES) + 256;
}

export interface EncoderHandlersOptions {
  modelId: string;
  model: RunnerInfo;
  limits: EncoderLimits;
  batcher: Batcher;
  /** Undefined when caching is off. */
  cache: EmbeddingCache | undefined;
  metrics: EncoderMetrics;
}

const HASH_BYTES = 32;

/** The dtype asked for: float16 unless float32 is named. */
function outputDtype(dtype: Dtype, field: string): EmbeddingDtype {
  if (dtype === Dtype.DTYPE_UNSPECIFIED || dtype === Dtype.DTYPE_FLOAT16) return 'float16';
  if (dtype === Dtype.DTYPE_FLOAT32) return 'float32';
  throw invalidArgument(
    `\`${field}\` must be DTYPE_FLOAT16 or DTYPE_FLOAT32, got ${Dtype[dtype] ?? dtype}`,
    'bad_dtype',
  );
}

function checkHash(hash: Uint8Array, required: boolean): void {
  if (hash.byteLength === 0 && !required) return;
  if (hash.byteLength !== HASH_BYTES) {
    throw invalidArgument(
      `\`content_hash\` must be a ${HASH_BYTES}-byte SHA-256 digest${required ? '' : ' or empty'}, got ${hash.byteLength} bytes`,
      'bad_hash',
    );
  }
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

/** Refuses a `content_hash` that is not `actual`, the hash of the sub-images received. */
function verifyHash(claimed: Uint8Array, actual: Buffer): void {
  if (actual.equals(claimed)) return;
  throw invalidArgument(
    `\`content_hash\` ${hex(claimed).slice(0, 16)}… does not match the sub-images sent, whose hash is ${hex(actual).slice(0, 16)}… (SHA-256 of the sub-images as laid out by subImagesHash, not of the encoded image file)`,
    'content_hash_mismatch',
  );
}

/** The request's sub-images as the model takes them, each checked against its bytes. */
function subImagesOf(
  request: EncodeRequest,
  { maxSubImages }: EncoderLimits,
  { patchSize, maxSide }: RunnerInfo,
): SubImage[] {
  const count = request.subImages.length;
  if (count === 0) throw invalidArgument('`sub_images` is empty', 'empty');
  if (count > maxSubImages) {
    throw invalidArgument(
      `\`sub_images\` has ${count} sub-images, over the limit of ${maxSubImages}`,
      'too_many_sub_images',
    );
  }
  return request.subImages.map((sub: WireSubImage, i) => {
    const field = `sub_images[${i}]`;
    const { height, width, pixels } = sub;
    for (const [name, side] of [
      ['height', height],
      ['width', width],
    ] as const) {
      if (side < patchSize || side > maxSide) {
        throw invalidArgument(
          `\`${field}.${name}\` is ${side}; it must be from ${patchSize} (one patch) to ${maxSide} pixels`,
          'bad_size',
        );
      }
    }
    if (pixels === undefined) throw invalidArgument(`\`${field}.pixels\` is missing`, 'bad_pixels');
    if (pixels.dtype !== Dtype.DTYPE_UINT8) {
      throw invalidArgument(
        `\`${field}.pixels.dtype\` is ${Dtype[pixels.dtype] ?? pixels.dtype}, expected DTYPE_UINT8`,
        'bad_dtype',
      );
    }
    const shape = pixels.shape.map(Number);
    if (shape.length !== 3 || shape[0] !== 3 || shape[1] !== height || shape[2] !== width) {
      throw invalidArgument(
        `\`${field}.pixels.shape\` is [${shape.join(', ')}], expected [3, ${height}, ${width}] (CHW of height × width)`,
        'bad_shape',
      );
    }
    const expected = 3 * height * width;
    if (pixels.data.byteLength !== expected) {
      throw invalidArgument(
        `\`${field}.pixels.data\` has ${pixels.data.byteLength} bytes; shape [3, ${height}, ${width}] needs ${expected}`,
        'bad_shape',
      );
    }
    // A private copy of exactly these bytes (the request's are views of its message,
    // tensor-codec.ts): it moves to the model's thread. The one copy of the pixels here.
    return { height, width, pixels: new Uint8Array(pixels.data) };
  });
}

const WIRE_DTYPE: Record<EmbeddingDtype, Dtype> = {
  float16: Dtype.DTYPE_FLOAT16,
  float32: Dtype.DTYPE_FLOAT32,
};

function response(entry: CachedEmbeddings, cacheHit: boolean): EncodeResponse {
  return {
    embeddings: { dtype: WIRE_DTYPE[entry.dtype], shape: entry.shape, data: entry.data },
    cacheHit,
  };
}

/** A computation several callers wait on; it is cancelled only when all of them leave. */
interface Shared {
  result: Promise<CachedEmbeddings>;
  controller: AbortController;
  waiters: number;
}

export function registerEncoder(server: GrpcServer, options: EncoderHandlersOptions): void {
  const { modelId, model, limits, batcher, cache, metrics } = options;
  const inFlight = new Map<string, Shared>();

  const compute = (subImages: SubImage[], dtype: EmbeddingDtype, key: string | undefined) => {
    const controller = new AbortController();
    const result = batcher.submit(subImages, dtype, controller.signal).then((encoded) => {
      metrics.subImages.inc(subImages.length);
      const entry: CachedEmbeddings = {
        data: Buffer.concat(encoded.blocks),
        shape: [subImages.length, model.tokensPerSubImage, model.hiddenSize],
        dtype,
      };
      if (key !== undefined) cache?.set(key, entry);
      return entry;
    });
    const shared: Shared = { result, controller, waiters: 0 };
    if (key !== undefined) {
      inFlight.set(key, shared);
      const forget = () => {
        if (inFlight.get(key) === shared) inFlight.delete(key);
      };
      result.then(forget, forget);
    }
    return shared;
  };

  /** Waits for `shared` on behalf of one caller; the caller leaving may cancel the work. */
  const await_ = async (shared: Shared, signal: AbortSignal): Promise<CachedEmbeddings> => {
    shared.waiters++;
    let onAbort: (() => void) | undefined;
    try {
      return await Promise.race([
        shared.result,
        new Promise<never>((_, reject) => {
          onAbort = () => reject(signal.reason);
          if (signal.aborted) onAbort();
          else signal.addEventListener('abort', onAbort, { once: true });
        }),
      ]);
    } finally {
      if (onAbort) signal.removeEventListener('abort', onAbort);
      if (--shared.waiters === 0 && signal.aborted) shared.controller.abort(signal.reason);
    }
  };

  const encode = async (request: EncodeRequest, ctx: HandlerContext): Promise<EncodeResponse> => {
    metrics.inFlight.inc();
    try {
      const dtype = outputDtype(request.outputDtype, 'output_dtype');
      checkHash(request.contentHash, false);
      const subImages = subImagesOf(request, limits, model);
      // An empty hash asks for no caching; any other is checked, even with the cache off, so a
      // caller hashing the wrong bytes finds out at once.
      const hash = request.contentHash.byteLength > 0 ? subImagesHash(subImages) : undefined;
      if (hash !== undefined) verifyHash(request.contentHash, hash);
      const key =
        cache && hash !== undefined
          ? EmbeddingCache.key({ model: modelId, contentHash: hash, split: request.split, dtype })
          : undefined;
      if (key !== undefined) {
        const hit = cache!.get(key);
        if (hit !== undefined && hit.shape[0] === subImages.length) {
          metrics.cacheHits.inc();
          metrics.requests.inc({ outcome: 'cache_hit' });
          return response(hit, true);
        }
        // The one count of a miss (a Lookup that found nothing counts none).
        metrics.cacheMisses.inc();
      }
      const shared =
        (key !== undefined ? inFlight.get(key) : undefined) ?? compute(subImages, dtype, key);
      let entry;
      try {
        entry = await await_(shared, ctx.signal);
      } catch (error) {
        if (error instanceof QueueFullError) throw queueFull(error.message);
        if (error instanceof OverBudgetError) {
          throw invalidArgument(
            `${error.message} (LOUPE_ENCODER_MEMORY_BUDGET_BYTES): send smaller sub-images`,
            'over_memory_budget',
          );
        }
        if (ctx.signal.aborted) throw ctx.signal.reason;
        if (error instanceof ServiceError) throw error;
        ctx.logger.error({ err: error }, 'vision run failed');
        throw unavailable(
          `the vision model failed: ${error instanceof Error ? error.message : String(error)}`,
          'model_failed',
        );
      }
      metrics.requests.inc({ outcome: 'computed' });
      return response(entry, false);
    } catch (error) {
      metrics.failures.inc({ reason: failureReason(error) });
      metrics.requests.inc({ outcome: 'failed' });
      throw error;
    } finally {
      metrics.inFlight.dec();
    }
  };

  // Lookup trusts nothing either: entries are only ever stored under a hash the encoder
  // computed, so a hit is what the model made of sub-images with exactly that hash. What it
  // does not do is tell callers apart: anyone who can name a hash learns whether (and what) is
  // cached for it — the cache is shared by everyone who may call the encoder.
  const lookup = async (request: LookupRequest): Promise<EncodeResponse> => {
    try {
      const dtype = outputDtype(request.outputDtype, 'output_dtype');
      checkHash(request.contentHash, true);
      const key = EmbeddingCache.key({
        model: modelId,
        contentHash: request.contentHash,
        split: request.split,
        dtype,
      });
      const hit = cache?.get(key);
      if (hit === undefined) {
        // Not a cache miss: the caller that looked first (the gateway) now sends the pixels,
        // and that Encode counts the miss, so an image the cache did not hold is one miss.
        metrics.requests.inc({ outcome: 'not_found' });
        throw notFound(
          `no ${dtype} embeddings cached for image ${hex(request.contentHash).slice(0, 16)}… with split ${request.split ? 'on' : 'off'}${cache ? '' : ' (the cache is off)'}`,
          'not_cached',
        );
      }
      metrics.cacheHits.inc();
      metrics.requests.inc({ outcome: 'cache_hit' });
      return response(hit, true);
    } catch (error) {
      if (!(error instanceof ServiceError && error.code === GrpcStatus.NOT_FOUND)) {
        metrics.failures.inc({ reason: failureReason(error) });
      }
      throw error;
    }
  };

  const info = async (): Promise<EncoderInfo> => ({
    modelId,
    hiddenSize: model.hiddenSize,
    tokensPerSubImage: model.tokensPerSubImage,
    minSide: model.patchSize,
    maxSide: model.maxSide,
    maxSubImagesPerRequest: limits.maxSubImages,
    maxBatchSubImages: limits.maxBatch,
    maxQueue: limits.maxQueue,
    weightFormat: model.weightFormat,
    weightBytes: model.weightBytes,
  });

  // Requests are refused from their length prefix when they are larger than any valid one,
  // and their bytes, as they arrive, are reserved from a budget as large as what the queue and
  // a running batch can hold (twice: the frames, then the joined message), so many large
  // requests at once are refused instead of buffered.
  const maxEncode = maxEncodeRequestBytes(limits, model);
  const perSubImage = 3 * model.maxSide * model.maxSide + SUB_IMAGE_FRAMING_BYTES;
  const receiving = new MemoryBudget(
    Math.max(
      2 * maxEncode,
      2 * perSubImage * (limits.maxQueue + limits.maxBatch + limits.maxSubImages),
    ),
  );
  server.addService(
    'loupe.v1.Encoder',
    EncoderServiceDefinition,
    {
      encode: server.unary('Encode', encode),
      lookup: server.unary('Lookup', lookup),
      info: server.unary('Info', info),
    },
    {
      encode: { maxBytes: maxEncode, budget: receiving, costFactor: 2 },
      lookup: { maxBytes: 1024 },
      info: { maxBytes: 1024 },
    },
  );
}
