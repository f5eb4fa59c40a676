// The main-thread handle of the vision session's thread (runner-worker.ts): one batch at a
// time, each answered by a promise. If the thread dies (it throws, exits, or leaves a run
// unanswered past the run timeout), every waiting run fails at once and so does each later
// one, with UNAVAILABLE (`worker_died`) and the reason, and `onDeath` tells the service, which
// cannot serve any more (see exitForDeadWorker).
import type { Worker } from 'node:worker_threads';
import {
  startWorker,
  unavailable,
  WorkerWatch,
  type ServiceError,
  type WorkerDeath,
} from '../runtime/index.js';
import type { SubImage } from '../model/index.js';
import type {
  EmbeddingDtype,
  RunnerInfo,
  RunnerMessage,
  RunnerSetup,
  RunRequest,
} from './runner-worker.js';

export type { EmbeddingDtype, RunnerInfo, RunnerSetup } from './runner-worker.js';

export interface RunResult {
  /** Per sub-image, its [tokens, hidden] embeddings in the dtype asked for, little-endian. */
  blocks: Uint8Array[];
  computeMs: number;
}

export interface VisionRunnerOptions {
  /** Longest one run may take before the thread counts as stuck (dead); 0: no limit. */
  runTimeoutMs?: number;
}

export class VisionRunner {
  #nextId = 1;
  readonly #waiting = new Map<
    number,
    { resolve: (r: RunResult) => void; reject: (e: Error) => void }
  >();
  #dead: Error | undefined;
  readonly #watch: WorkerWatch;
  /** Called once if the thread dies, before the waiting runs fail. */
  onDeath: ((death: WorkerDeath) => void) | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly info: RunnerInfo,
    { runTimeoutMs = 0 }: VisionRunnerOptions,
  ) {
    this.#watch = new WorkerWatch(worker, {
      what: 'the vision thread',
      stallTimeoutMs: runTimeoutMs,
      onDeath: (death) => this.#die(death),
    });
    worker.on('message', (message: RunnerMessage) => {
      if (message.kind !== 'done' && message.kind !== 'error') return;
      const waiter = this.#waiting.get(message.id);
      // Too late: the thread was declared stuck, and the waiter failed with it.
      if (!this.#watch.heard(this.#waiting.size > (waiter ? 1 : 0)) || !waiter) return;
      this.#waiting.delete(message.id);
      if (message.kind === 'done') {
        waiter.resolve({ blocks: message.blocks, computeMs: message.computeMs });
      } else {
        waiter.reject(new Error(`vision run failed: ${message.message}`));
      }
    });
  }

  /** Starts the thread and waits until the model is loaded (or fails to). */
  static async start(setup: RunnerSetup, options: VisionRunnerOptions = {}): Promise<VisionRunner> {
    const { worker, info } = await startWorker<RunnerInfo>(
      new URL('./runner-worker.js', import.meta.url),
      setup,
      'the vision thread',
    );
    return new VisionRunner(worker, info, options);
  }

  /**
   * Encodes `subImages` in one run (padded to the largest by encodeImages), each block in the
   * dtype given for it.
   */
  run(subImages: SubImage[], dtypes: EmbeddingDtype[]): Promise<RunResult> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise<RunResult>((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      const request: RunRequest = { kind: 'run', id, subImages, dtypes };
      this.worker.postMessage(request);
      this.#watch.expect();
    });
  }

  async close(): Promise<void> {
    this.#dead ??= new Error('the encoder is shutting down');
    const dead = this.#watch.death !== undefined;
    this.#watch.closing();
    // A dead thread has ended, or was told to end after its run (WorkerWatch).
    if (!dead) await this.worker.terminate();
  }

  /** Resolves when the thread has ended, for whatever reason. */
  get ended(): Promise<void> {
    return this.#watch.ended;
  }

  #die(death: WorkerDeath): void {
    const error: ServiceError = unavailable(
      `the vision model cannot run: ${death.message}; the encoder is exiting to be restarted`,
      'worker_died',
    );
    this.#dead ??= error;
    this.onDeath?.(death);
    for (const waiter of this.#waiting.values()) waiter.reject(error);
    this.#waiting.clear();
  }
}
