// The worker-thread pool, bounded twice: at most `workers` images run at once, and an image
// runs only when its decode cost (decode-cost.ts) fits in what the memory budget has left.
// Others wait in order, at most `maxQueue` of them; beyond that, or when waiting could never
// end in a start (see #admissible), the call is refused at once.
//
// A call whose caller cancels, or whose deadline passes, leaves at once. Waiting, it just
// leaves the queue. Running, its worker is NOT stopped: terminating a thread in the middle of
// a libvips call leaks that call's native buffers (about 60 MB per cancelled 24-megapixel
// decode, and RSS climbs with every cancel; see test/hostile-input.test.ts). The image runs to
// its end (decodes are bounded by LOUPE_PREPROCESSOR_DECODE_TIMEOUT_S), its result is dropped
// in the worker (worker.ts: PreprocessTask.cancelled), and its reservation is returned then —
// when its memory really is free.
import { Piscina } from 'piscina';
import { QueueFullError, type MemoryBudget } from '../runtime/index.js';
import type { PreprocessOutcome, PreprocessTask } from './worker.js';
import type { WorkerSetup } from './worker.js';

/** The memory an image needs now cannot be found soon enough: RESOURCE_EXHAUSTED. */
export class BudgetExhaustedError extends Error {
  override readonly name = 'BudgetExhaustedError';
}

/** The image costs more than the whole budget: it can never run (INVALID_ARGUMENT). */
export class OverBudgetError extends Error {
  override readonly name = 'OverBudgetError';
}

export interface PreprocessPoolOptions {
  workers: number;
  maxQueue: number;
  setup: WorkerSetup;
  budget: MemoryBudget;
  /** The worker module; default worker.js beside this file (tests pass a stand-in). */
  filename?: string;
}

export interface PoolJob {
  /** The encoded image; handed to the worker only when it starts (see forWorker). */
  image: Uint8Array;
  split: boolean | undefined;
  /** What the run reserves from the budget (decodeCost, the worker's copy of the input included). */
  cost: number;
  /**
   * What the call holds in the budget anyway while it waits (its request's bytes, reserved by
   * the gRPC layer): used to check that waiting can end (see #admissible).
   */
  held: number;
}

interface Waiting {
  job: PoolJob;
  start(release: () => void): void;
}

export class PreprocessPool {
  private readonly piscina: Piscina<PreprocessTask, PreprocessOutcome>;
  readonly #workers: number;
  readonly #maxQueue: number;
  readonly #budget: MemoryBudget;
  #queue: Waiting[] = [];
  #running = 0;

  constructor({ workers, maxQueue, setup, budget, filename }: PreprocessPoolOptions) {
    this.#workers = workers;
    this.#maxQueue = maxQueue;
    this.#budget = budget;
    this.piscina = new Piscina({
      filename: filename ?? new URL('./worker.js', import.meta.url).href,
      minThreads: workers,
      maxThreads: workers,
      // Tasks are handed over only when a thread is free (see #pump): piscina never queues.
      maxQueue: Infinity,
      idleTimeout: Infinity,
      workerData: setup,
    });
    budget.onRelease(() => this.#pump());
  }

  /** Images queued or running (running ones include those whose caller has left). */
  get load(): number {
    return this.#queue.length + this.#running;
  }

  /** Images waiting for a thread or for memory. */
  get queueDepth(): number {
    return this.#queue.length;
  }

  /** Images running on a thread now. */
  get running(): number {
    return this.#running;
  }

  /**
   * Runs one image. Throws at once OverBudgetError (it could never fit), QueueFullError or
   * BudgetExhaustedError (no room to wait); rejects with `signal.reason` when it aborts.
   */
  run(job: PoolJob, signal: AbortSignal): Promise<PreprocessOutcome> {
    if (signal.aborted) return Promise.reject(signal.reason);
    const budget = this.#budget;
    if (job.cost + job.held > budget.limit) {
      return Promise.reject(
        new OverBudgetError(
          `preprocessing this image needs about ${mib(job.cost + job.held)} MiB, more than the whole memory budget of ${mib(budget.limit)} MiB`,
        ),
      );
    }
    return new Promise<PreprocessOutcome>((resolve, reject) => {
      let settled = false;
      const settle = (finish: () => void) => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        finish();
      };
      // Tells the worker the caller has left (see PreprocessTask.cancelled).
      const cancelled = new Int32Array(new SharedArrayBuffer(4));
      const onAbort = () => {
        // Waiting: leave the queue (and let the next one try). Running: see the file comment.
        Atomics.store(cancelled, 0, 1);
        const before = this.#queue.length;
        this.#queue = this.#queue.filter((w) => w !== waiting);
        settle(() => reject(signal.reason));
        if (this.#queue.length !== before) this.#pump();
      };
      const waiting: Waiting = {
        job,
        start: (release) => {
          this.#running++;
          const image = forWorker(job.image);
          this.piscina
            .run(
              { image, split: job.split, cancelled },
              { transferList: [image.buffer as ArrayBuffer] },
            )
            .then(
              (outcome) => settle(() => resolve(outcome)),
              (error: unknown) => settle(() => reject(error)),
            )
            .finally(() => {
              this.#running--;
              // After the caller's continuation has run to its end (the response serialized
              // and handed to the transport, which happens synchronously after the handler
              // returns): only then are the sub-images it holds let go.
              setImmediate(release); // pumps
            });
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      if (this.#queue.length === 0 && this.#running < this.#workers) {
        const release = budget.reserve(job.cost);
        if (release) return waiting.start(release);
      }
      const refusal = this.#admissible(job);
      if (refusal) {
        settle(() => reject(refusal));
        return;
      }
      this.#queue.push(waiting);
    });
  }

  /**
   * Whether `job` may wait; the error to refuse it with otherwise. Waiting is bounded in
   * number, and must be able to end: once every running image is done, what waiting calls
   * hold (their requests' bytes) plus the largest cost among them must fit the budget, so the
   * head of the queue can always start eventually.
   */
  #admissible(job: PoolJob): Error | undefined {
    if (this.#queue.length >= this.#maxQueue) {
      return new QueueFullError(
        `preprocessor queue is full (${this.load} images queued or running, limit ${this.#workers + this.#maxQueue})`,
      );
    }
    let held = job.held;
    let largest = job.cost;
    for (const { job: other } of this.#queue) {
      held += other.held;
      largest = Math.max(largest, other.cost);
    }
    if (held + largest > this.#budget.limit) {
      return new BudgetExhaustedError(
        `the preprocessor's memory budget is taken (${mib(this.#budget.used)} of ${mib(this.#budget.limit)} MiB reserved, ${this.#queue.length} images waiting); this image needs about ${mib(job.cost)} MiB`,
      );
    }
    return undefined;
  }

  /** Starts waiting images, in order, while a thread is free and the head's cost fits. */
  #pump(): void {
    while (this.#queue.length > 0 && this.#running < this.#workers) {
      const head = this.#queue[0]!;
      const release = this.#budget.reserve(head.job.cost);
      if (!release) return;
      this.#queue.shift();
      head.start(release);
    }
  }

  close(): Promise<void> {
    return this.piscina.close({ force: false });
  }
}

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

/** Bytes of a gRPC frame around a request's image: its 5-byte header and field tags. */
const FRAME_SLACK_BYTES = 64;

/**
 * The image as the worker gets it, in a buffer moved to its thread. A large request's bytes
 * sit in a buffer of their own (grpc-js joins each message into a new one, and is done with it
 * once the request is decoded): that buffer moves as it is, saving a copy and leaving no
 * garbage on the gRPC thread. A view into a shared buffer (small messages come from Node's
 * buffer pool) is copied instead, since moving it would detach every other view.
 */
function forWorker(image: Uint8Array): Uint8Array {
  const own =
    image.byteLength >= 64 * 1024 &&
    image.buffer instanceof ArrayBuffer &&
    image.buffer.byteLength - image.byteLength <= FRAME_SLACK_BYTES;
  return own ? image : new Uint8Array(image);
}
