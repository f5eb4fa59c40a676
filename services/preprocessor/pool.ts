// The worker-thread pool, bounded: at most `workers` images run and `maxQueue` wait.
import { Piscina } from 'piscina';
import type { PreprocessOutcome, PreprocessTask, WorkerSetup } from './worker.js';

export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
}

export interface PreprocessPoolOptions {
  workers: number;
  maxQueue: number;
  setup: WorkerSetup;
}

export class PreprocessPool {
  private readonly piscina: Piscina<PreprocessTask, PreprocessOutcome>;
  private readonly capacity: number;
  private pending = 0;

  constructor({ workers, maxQueue, setup }: PreprocessPoolOptions) {
    this.capacity = workers + maxQueue;
    this.piscina = new Piscina({
      filename: new URL('./worker.js', import.meta.url).href,
      minThreads: workers,
      maxThreads: workers,
      // Admission is decided here (see run), so piscina's own queue never refuses.
      maxQueue: Infinity,
      idleTimeout: Infinity,
      workerData: setup,
    });
  }

  /** Images queued or running. */
  get load(): number {
    return this.pending;
  }

  /** Images waiting for a thread. */
  get queueDepth(): number {
    return this.piscina.queueSize;
  }

  /** Runs one task; throws QueueFullError at once when the pool is at capacity. */
  async run(task: PreprocessTask, signal: AbortSignal): Promise<PreprocessOutcome> {
    if (this.pending >= this.capacity) {
      throw new QueueFullError(
        `preprocessor queue is full (${this.pending} images queued or running, limit ${this.capacity})`,
      );
    }
    this.pending++;
    try {
      return await this.piscina.run(task, {
        signal,
        transferList: [task.image.buffer as ArrayBuffer],
      });
    } finally {
      this.pending--;
    }
  }

  close(): Promise<void> {
    return this.piscina.close({ force: false });
  }
}
