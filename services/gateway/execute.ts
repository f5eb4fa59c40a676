// Execute: a planned request's images become embeddings (fetch → preprocess → encode, or the
// encoder's cache), then the decoder generates and its tokens become text deltas
// (docs/gateway.md).
import { createHash } from 'node:crypto';
import {
  FinishReason,
  type GenerateRequest,
  type GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import type { EncodeResponse } from '../../proto/gen/loupe/v1/encoder.js';
import type { PreprocessResponse } from '../../proto/gen/loupe/v1/preprocessor.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { subImagesHash } from '../runtime/index.js';
import type { IncrementalDetokenizer } from './detokenizer.js';
import { loadImage, type ImageSourceOptions } from './image-source.js';
import type { ImageRef, ValidChatRequest } from './request.js';
import type { CallContext, GenerationStream, StageClient } from './stage-client.js';

export interface EmbeddedImage {
  /** Sub-image hash: the encoder's cache key, and the image's identity for the decoder. */
  contentHash: Buffer;
  split: boolean;
  /** Embedding rows: sub-images × tokens per sub-image. */
  rows: number;
  hidden: number;
  embeddings: NonNullable<EncodeResponse['embeddings']>;
}

export interface ImageEmbedderOptions {
  stages: Pick<StageClient, 'preprocess' | 'lookup' | 'encode'>;
  fetch: ImageSourceOptions;
  /** Told, per image, whether its embeddings came from the cache or were computed. */
  onImage?: (source: 'cache' | 'computed') => void;
}

export class ImageEmbedder {
  /** Image file (sha256, split) → the sub-image hash this gateway's preprocessor gave it. */
  readonly #subImageHashes = new BoundedMap<string, { hash: Buffer; split: boolean }>(10_000);

  constructor(private readonly o: ImageEmbedderOptions) {}

  /** Every image of the request, in order, all at once. */
  embedAll(images: readonly ImageRef[], ctx: CallContext): Promise<EmbeddedImage[]> {
    return Promise.all(images.map((image) => this.embed(image, ctx)));
  }

  /**
   * The encoder's cache is keyed by the hash of the sub-images it encodes (it checks any hash
   * a caller claims), so the key is known once the preprocessor has run — which sends it, made
   * in its worker threads, so this thread does not hash the pixels; a file this gateway
   * preprocessed before skips that step through the sub-image hash it remembers. The
   * preprocessor's sub-images go to the encoder as received (views of its answer, copied once
   * into the Encode request), and the encoder's rows to the decoder likewise
   * (services/runtime/tensor-codec.ts).
   */
  async embed({ url, field, split }: ImageRef, ctx: CallContext): Promise<EmbeddedImage> {
    const { stages } = this.o;
    const bytes = await loadImage(url, field, this.o.fetch, ctx.signal);
    const fileKey = `${createHash('sha256').update(bytes).digest('hex')}:${split}`;
    const known = this.#subImageHashes.get(fileKey);
    let contentHash = known?.hash;
    let found = known ? await stages.lookup(known.hash, known.split, ctx) : undefined;
    if (found) {
      this.o.onImage?.('cache');
    } else {
      const pre = await stages.preprocess({ image: bytes, split }, ctx);
      contentHash = sentHash(pre) ?? hashSubImages(pre);
      this.#subImageHashes.set(fileKey, { hash: contentHash, split: pre.split });
      found =
        (known ? undefined : await stages.lookup(contentHash, pre.split, ctx)) ??
        (await stages.encode(
          {
            subImages: pre.subImages,
            contentHash,
            split: pre.split,
            outputDtype: Dtype.DTYPE_FLOAT16,
          },
          ctx,
        ));
      this.o.onImage?.(found.cacheHit ? 'cache' : 'computed');
    }
    const embeddings = found.embeddings!;
    const [subImages, tokens, hidden] = embeddings.shape.map(Number) as [number, number, number];
    if (subImages > 1 !== split)
      throw new Error(`the image at ${field} came back ${split ? 'not ' : ''}split`);
    return { contentHash: contentHash!, split, rows: subImages * tokens, hidden, embeddings };
  }
}

const SHA256_BYTES = 32;

/**
 * The preprocessor's hash of its sub-images (PreprocessResponse.sub_images_hash), trusted as
 * its pixels are (the encoder checks it against them on Encode); undefined from one that sent
 * none (a version before it). A copy of its 32 bytes: the memo of hashes must not keep a
 * whole answer alive through a view.
 */
function sentHash(pre: PreprocessResponse): Buffer | undefined {
  const hash = pre.subImagesHash as Buffer | undefined;
  return hash !== undefined && hash.byteLength === SHA256_BYTES ? Buffer.from(hash) : undefined;
}

/** The hash of the preprocessor's sub-images, computed here (a pass over every pixel). */
function hashSubImages(pre: PreprocessResponse): Buffer {
  return subImagesHash(
    pre.subImages.map(({ height, width, pixels }) => ({
      height,
      width,
      pixels: pixels?.data ?? new Uint8Array(0),
    })),
  );
}

/**
 * The decoder's request for one choice: the prompt, each image's rows (they replace the
 * prompt's image tokens in order), the sampling. Choice i of a seeded request samples with
 * seed + i, so each choice differs and each is reproducible. The rows are the encoder's bytes
 * as received, not converted or copied.
 */
export function generateRequest(
  request: ValidChatRequest,
  ids: number[],
  images: readonly EmbeddedImage[],
  imageTokenId: number,
  choice = 0,
): GenerateRequest {
  const imageTokens = ids.reduce((n, id) => n + (id === imageTokenId ? 1 : 0), 0);
  const rows = images.reduce((n, e) => n + e.rows, 0);
  if (imageTokens !== rows)
    throw new Error(`prompt has ${imageTokens} image tokens but ${rows} embedding rows`);
  return {
    promptTokenIds: ids,
    images: images.map((e) => ({
      embeddings: {
        dtype: e.embeddings.dtype,
        shape: [e.rows, e.hidden],
        data: e.embeddings.data,
      },
      // The image's identity for the decoder's prefix cache (every image token has one id).
      contentHash: e.contentHash,
    })),
    sampling:
      request.sampling.seed === undefined
        ? request.sampling
        : {
            ...request.sampling,
            seed: String((BigInt(request.sampling.seed) + BigInt(choice)) % 2n ** 64n),
          },
    stopTokenIds: request.stopTokenIds,
    maxNewTokens: request.maxTokens,
    logprobs: request.logprobs,
    topLogprobs: request.topLogprobs,
    logitBias: request.logitBias,
    responseFormat:
      request.responseFormat === undefined
        ? undefined
        : {
            format:
              request.responseFormat.kind === 'json_object'
                ? { $case: 'jsonObject', value: {} }
                : { $case: 'jsonSchema', value: request.responseFormat.schema },
          },
  };
}

/**
 * A stream opened only once `after` resolves (and not at all if cancelled before): the choices
 * after the first start when the first has its first token, so that the decoder has cached
 * the prompt's KV and each of them reuses it instead of computing it again.
 */
export function deferredStream(
  after: Promise<unknown>,
  open: () => GenerationStream,
): GenerationStream {
  let stream: GenerationStream | undefined;
  let cancelled = false;
  return {
    cancel() {
      cancelled = true;
      stream?.cancel();
    },
    async *[Symbol.asyncIterator]() {
      await after;
      if (cancelled) return;
      stream = open();
      yield* stream;
    },
  };
}

type TokenEvent = Extract<GenerateResponse['event'], { $case: 'token' }>['value'];

export type Delta<L> =
  | { kind: 'text'; text: string; logprobs: L[] | undefined }
  | { kind: 'finish'; finish: 'stop' | 'length' };

/**
 * One decoder stream as text deltas, ending with one `finish`; the decoder is stopped as soon
 * as a stop string appears. `logprob` renders a token's logprobs when they were asked for.
 */
export class Generation<L> {
  /** Tokens generated so far. */
  completionTokens = 0;
  /**
   * Resolves at the first token (the prompt's prefill is done), or when the generation ends
   * without one (failed, cancelled, or finished at once).
   */
  readonly firstToken: Promise<void>;
  #first!: () => void;

  constructor(
    private readonly stream: GenerationStream,
    private readonly detokenizer: IncrementalDetokenizer,
    private readonly logprob?: (token: TokenEvent) => L,
  ) {
    this.firstToken = new Promise<void>((resolve) => (this.#first = resolve));
  }

  async *deltas(): AsyncGenerator<Delta<L>> {
    try {
      yield* this.#deltas();
    } finally {
      this.#first();
    }
  }

  async *#deltas(): AsyncGenerator<Delta<L>> {
    for await (const message of this.stream) {
      const event = message.event;
      if (event?.$case === 'token') {
        this.completionTokens++;
        this.#first();
        const text = this.detokenizer.push(event.value.id);
        yield {
          kind: 'text',
          text,
          logprobs: this.logprob ? [this.logprob(event.value)] : undefined,
        };
        if (this.detokenizer.stopped) {
          this.stream.cancel();
          yield { kind: 'finish', finish: 'stop' };
          return;
        }
      } else if (event?.$case === 'finished') {
        const tail = this.detokenizer.finish();
        if (tail) yield { kind: 'text', text: tail, logprobs: undefined };
        yield { kind: 'finish', finish: finishReason(event.value.reason) };
        return;
      }
    }
  }
}

/** The decoder's finish reason as OpenAI's; any other is the decoder's fault. */
function finishReason(reason: FinishReason): 'stop' | 'length' {
  if (reason === FinishReason.FINISH_REASON_STOP) return 'stop';
  if (reason === FinishReason.FINISH_REASON_LENGTH) return 'length';
  throw new Error(`the decoder finished a sequence with reason ${reason}`);
}

/** A Map that forgets its least recently used entries beyond `limit`. */
class BoundedMap<K, V> {
  readonly #map = new Map<K, V>();
  constructor(private readonly limit: number) {}

  get(key: K): V | undefined {
    const value = this.#map.get(key);
    if (value !== undefined) {
      this.#map.delete(key);
      this.#map.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    this.#map.delete(key);
    this.#map.set(key, value);
    if (this.#map.size > this.limit) this.#map.delete(this.#map.keys().next().value as K);
  }
}
