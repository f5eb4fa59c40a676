// Dynamic batching for the vision runner. Requests queue their sub-images; a batch starts
// when the runner is free and either `maxBatch` sub-images wait or the oldest has waited
// `maxWaitMs`. A batch takes sub-images in arrival order, skipping those whose size would pad
// the batch by more than `maxPadding` (the share of padded pixels the model computes for
// nothing) or take it over `maxPixels` (the padded pixels of one run: the model's input and
// activations grow with them, so they bound its memory); skipped ones lead a later batch, so
// none waits behind newer work for long.
//
//   queue: [a0 a1 | b0 | c0 c1 c2 c3 c4]   maxBatch 4  ->  run [a0 a1 b0 c0], then [c1 c2 c3 c4]
//
// A request whose caller cancels or whose deadline passes leaves the queue at once and never
// runs; one cancelled while its batch runs has its result dropped. The queue is bounded in
// sub-images: a request that does not fit is refused whole (QueueFullError).
import type { SubImage } from '../model/index.js';
import { QueueFullError } from '../runtime/index.js';
import type { EmbeddingDtype, RunResult } from './runner.js';

export interface BatcherOptions {
  /** Most sub-images in one run (1 turns batching off). */
  maxBatch: number;
  /** Longest a sub-image waits for others before a partial batch runs, ms. */
  maxWaitMs: number;
  /** Most sub-images waiting (not counting the running batch). */
  maxQueue: number;
  /** Largest share of a batch's pixels that may be padding, 0 (same sizes only) to 1. */
  maxPadding: number;
  /**
   * Most padded pixels in one run (sub-images × the batch's height × width); a sub-image
   * alone always runs (the caller keeps this at least the largest sub-image). Default: no
   * bound beyond maxBatch.
   */
  maxPixels?: number;
  run(subImages: SubImage[], dtypes: EmbeddingDtype[]): Promise<RunResult>;
  /** Called after each run with its size, each sub-image's queue wait and the compute time. */
  onBatch?(stats: { size: number; waitsMs: number[]; computeMs: number; failed: boolean }): void;
}

export interface Encoded {
  /** One [tokens, hidden] block per sub-image, in request order. */
  blocks: Uint8Array[];
  /** Longest queue wait of the request's sub-images, and the compute time of its batches, ms. */
  queueMs: number;
  computeMs: number;
}

interface Pending {
  blocks: (Uint8Array | undefined)[];
  remaining: number;
  dtype: EmbeddingDtype;
  queueMs: number;
  computeMs: number;
  settled: boolean;
  resolve(value: Encoded): void;
  reject(error: unknown): void;
  cleanup(): void;
}

interface Item {
  request: Pending;
  index: number;
  subImage: SubImage;
  enqueuedAt: number;
}

export class Batcher {
  #queue: Item[] = [];
  #busy = false;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(private readonly options: BatcherOptions) {}

  /** Sub-images waiting for a run. */
  get queueDepth(): number {
    return this.#queue.length;
  }

  /** Whether a batch is running now. */
  get busy(): boolean {
    return this.#busy;
  }

  submit(subImages: SubImage[], dtype: EmbeddingDtype, signal: AbortSignal): Promise<Encoded> {
    if (this.#closed) return Promise.reject(new Error('the encoder is shutting down'));
    if (signal.aborted) return Promise.reject(signal.reason);
    const { maxQueue } = this.options;
    if (this.#queue.length + subImages.length > maxQueue) {
      return Promise.reject(
        new QueueFullError(
          `encoder queue is full: ${this.#queue.length} sub-images waiting, this request adds ${subImages.length}, limit ${maxQueue}`,
        ),
      );
    }
    return new Promise<Encoded>((resolve, reject) => {
      const onAbort = () => {
        this.#queue = this.#queue.filter((item) => item.request !== request);
        settle(() => reject(signal.reason));
      };
      const settle = (finish: () => void) => {
        if (request.settled) return;
        request.settled = true;
        request.cleanup();
        finish();
      };
      const request: Pending = {
        blocks: new Array<Uint8Array | undefined>(subImages.length),
        remaining: subImages.length,
        dtype,
        queueMs: 0,
        computeMs: 0,
        settled: false,
        resolve: (value) => settle(() => resolve(value)),
        reject: (error) => {
          this.#queue = this.#queue.filter((item) => item.request !== request);
          settle(() => reject(error));
        },
        cleanup: () => signal.removeEventListener('abort', onAbort),
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const now = performance.now();
      subImages.forEach((subImage, index) =>
        this.#queue.push({ request, index, subImage, enqueuedAt: now }),
      );
      this.#schedule();
    });
  }

  /** Refuses new work; queued requests fail, the running batch finishes. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    const requests = new Set(this.#queue.map((item) => item.request));
    this.#queue = [];
    for (const request of requests) request.reject(new Error('the encoder is shutting down'));
  }

  #schedule(): void {
    if (this.#busy || this.#queue.length === 0) return;
    const { maxBatch, maxWaitMs } = this.options;
    const waited = performance.now() - this.#queue[0]!.enqueuedAt;
    if (this.#queue.length >= maxBatch || waited >= maxWaitMs) {
      this.#dispatch();
      return;
    }
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#schedule();
      }, maxWaitMs - waited);
    }
  }

  #dispatch(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#pick();
    if (batch.length === 0) return;
    this.#busy = true;
    const started = performance.now();
    const waitsMs = batch.map((item) => started - item.enqueuedAt);
    const subImages = batch.map((item) => item.subImage);
    const dtypes = batch.map((item) => item.request.dtype);
    void this.options.run(subImages, dtypes).then(
      (result) => {
        this.options.onBatch?.({
          size: batch.length,
          waitsMs,
          computeMs: result.computeMs,
          failed: false,
        });
        batch.forEach((item, i) => {
          const request = item.request;
          if (request.settled) return;
          request.blocks[item.index] = result.blocks[i];
          request.queueMs = Math.max(request.queueMs, waitsMs[i]!);
          request.computeMs += result.computeMs;
          if (--request.remaining === 0) {
            request.resolve({
              blocks: request.blocks as Uint8Array[],
              queueMs: request.queueMs,
              computeMs: request.computeMs,
            });
          }
        });
        this.#finished();
      },
      (error: unknown) => {
        this.options.onBatch?.({
          size: batch.length,
          waitsMs,
          computeMs: performance.now() - started,
          failed: true,
        });
        for (const request of new Set(batch.map((item) => item.request))) request.reject(error);
        this.#finished();
      },
    );
  }

  #finished(): void {
    this.#busy = false;
    this.#schedule();
  }

  /** The next batch: the oldest sub-image, then later ones that fit (see the file comment). */
  #pick(): Item[] {
    const { maxBatch, maxPadding, maxPixels = Infinity } = this.options;
    const batch: Item[] = [];
    const rest: Item[] = [];
    let height = 0;
    let width = 0;
    let area = 0;
    for (const item of this.#queue) {
      if (item.request.settled) continue; // cancelled or failed meanwhile
      const { height: h, width: w } = item.subImage;
      const H = Math.max(height, h);
      const W = Math.max(width, w);
      const padded = H * W * (batch.length + 1);
      const fits =
        batch.length === 0 ||
        (batch.length < maxBatch &&
          padded <= maxPixels &&
          padded - (area + h * w) <= maxPadding * padded);
      if (fits) {
        batch.push(item);
        height = H;
        width = W;
        area += h * w;
      } else {
        rest.push(item);
      }
    }
    this.#queue = rest;
    return batch;
  }
}
