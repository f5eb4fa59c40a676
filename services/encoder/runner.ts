// The main-thread handle of the vision session's thread (runner-worker.ts): one batch at a
// time, each answered by a promise. If the thread dies, every waiting run fails and so does
// each later one, with the reason, so the service reports errors instead of hanging.
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../runtime/index.js';
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

export class VisionRunner {
  #nextId = 1;
  readonly #waiting = new Map<
    number,
    { resolve: (r: RunResult) => void; reject: (e: Error) => void }
  >();
  #dead: Error | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly info: RunnerInfo,
  ) {
    worker.on('message', (message: RunnerMessage) => {
      if (message.kind !== 'done' && message.kind !== 'error') return;
      const waiter = this.#waiting.get(message.id);
      if (!waiter) return;
      this.#waiting.delete(message.id);
      if (message.kind === 'done') {
        waiter.resolve({ blocks: message.blocks, computeMs: message.computeMs });
      } else {
        waiter.reject(new Error(`vision run failed: ${message.message}`));
      }
    });
    const die = (error: Error) => {
      this.#dead ??= error;
      for (const waiter of this.#waiting.values()) waiter.reject(this.#dead);
      this.#waiting.clear();
    };
    worker.on('error', (error) => die(new Error(`vision thread crashed: ${error.message}`)));
    worker.on('exit', (code) => die(new Error(`vision thread exited (code ${code})`)));
  }

  /** Starts the thread and waits until the model is loaded (or fails to). */
  static async start(setup: RunnerSetup): Promise<VisionRunner> {
    const { worker, info } = await startWorker<RunnerInfo>(
      new URL('./runner-worker.js', import.meta.url),
      setup,
      'the vision thread',
    );
    return new VisionRunner(worker, info);
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
    });
  }

  async close(): Promise<void> {
    this.#dead ??= new Error('the encoder is shutting down');
    await this.worker.terminate();
  }
}
