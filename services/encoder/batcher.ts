// Dynamic batching for the vision runner. Requests queue their sub-images; a batch starts
// when the runner is free and either `maxBatch` sub-images wait or the oldest has waited
// `maxWaitMs`. A batch takes sub-images in arrival order, skipping those whose size would pad
// the batch by more than `maxPadding` (the share of padded pixels the model computes for
// nothing), take its run's estimated memory over what the memory budget has left
// (`memoryBudgetBytes`, `estimateRunBytes`: run-memory.ts), or take it over `maxPixels` (the
// padded pixels of one run, an extra bound); skipped ones lead a later batch, so none waits
// behind newer work for long. A run holds its estimate in the budget until it ends.
//
//   queue: [a0 a1 | b0 | c0 c1 c2 c3 c4]   maxBatch 4  ->  run [a0 a1 b0 c0], then [c1 c2 c3 c4]
//
// A request whose caller cancels or whose deadline passes leaves the queue at once and never
// runs; one cancelled while its batch runs has its result dropped. The queue is bounded in
// sub-images: a request that does not fit is refused whole (QueueFullError), and so is one
// with a sub-image whose run alone would exceed the whole memory budget (OverBudgetError).
import type { SubImage } from '../model/index.js';
import { MemoryBudget, QueueFullError } from '../runtime/index.js';
import type { Size } from './run-memory.js';
import type { EmbeddingDtype, RunResult } from './runner.js';

/** A sub-image whose run alone would take more than the whole memory budget: it never runs. */
export class OverBudgetError extends Error {
  override readonly name = 'OverBudgetError';
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

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
  /**
   * Bytes a run may add to the process at its peak, as `estimateRunBytes` prices it; a batch
   * takes a sub-image only while its run's estimate fits what is left. Default: no bound.
   */
  memoryBudgetBytes?: number;
  /** A run's peak memory, bytes, from its sub-images' sizes (run-memory.ts estimateRunBytes). */
  estimateRunBytes?(sizes: readonly Size[]): number;
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
  readonly #memory: MemoryBudget;

  constructor(private readonly options: BatcherOptions) {
    this.#memory = new MemoryBudget(options.memoryBudgetBytes ?? Infinity);
  }

  /** The run memory budget: its limit, and what the running batch holds (its estimate). */
  get memory(): { readonly limit: number; readonly used: number } {
    return this.#memory;
  }

  #estimate(sizes: readonly Size[]): number {
    return this.options.estimateRunBytes?.(sizes) ?? 0;
  }

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
    // Sizes are bounded (the caller checks them against the model's largest, whose run alone
    // must fit for the service to start), so this only guards against a budget set too small.
    for (const [i, { height, width }] of subImages.entries()) {
      const bytes = this.#estimate([{ height, width }]);
      if (bytes > this.#memory.limit) {
        return Promise.reject(
          new OverBudgetError(
            `encoding sub-image ${i} (${width}x${height}) needs about ${mib(bytes)} MiB (estimated), more than the whole memory budget of ${mib(this.#memory.limit)} MiB`,
          ),
        );
      }
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
    const { batch, bytes } = this.#pick();
    if (batch.length === 0) return;
    this.#busy = true;
    // Nothing else runs, and the pick kept within the budget: the reservation holds.
    const release = this.#memory.reserve(bytes) ?? (() => {});
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
        this.#finished(release);
      },
      (error: unknown) => {
        this.options.onBatch?.({
          size: batch.length,
          waitsMs,
          computeMs: performance.now() - started,
          failed: true,
        });
        for (const request of new Set(batch.map((item) => item.request))) request.reject(error);
        this.#finished(release);
      },
    );
  }

  #finished(release: () => void): void {
    release();
    this.#busy = false;
    this.#schedule();
  }

  /** The next batch: the oldest sub-image, then later ones that fit (see the file comment). */
  #pick(): { batch: Item[]; bytes: number } {
    const { maxBatch, maxPadding, maxPixels = Infinity } = this.options;
    const left = this.#memory.limit - this.#memory.used;
    const batch: Item[] = [];
    const sizes: Size[] = [];
    const rest: Item[] = [];
    let height = 0;
    let width = 0;
    let area = 0;
    let bytes = 0;
    for (const item of this.#queue) {
      if (item.request.settled) continue; // cancelled or failed meanwhile
      const { height: h, width: w } = item.subImage;
      const H = Math.max(height, h);
      const W = Math.max(width, w);
      const padded = H * W * (batch.length + 1);
      let fits =
        batch.length === 0 ||
        (batch.length < maxBatch &&
          padded <= maxPixels &&
          padded - (area + h * w) <= maxPadding * padded);
      // The first sub-image's run alone fits the whole budget (submit checks it) and nothing
      // else runs, so it always goes.
      const estimate = fits ? this.#estimate([...sizes, { height: h, width: w }]) : 0;
      if (fits && batch.length > 0 && estimate > left) fits = false;
      if (fits) {
        batch.push(item);
        sizes.push({ height: h, width: w });
        height = H;
        width = W;
        area += h * w;
        bytes = estimate;
      } else {
        rest.push(item);
      }
    }
    this.#queue = rest;
    return { batch, bytes };
  }
}
