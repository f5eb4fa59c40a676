// The main-thread handle of the vision session's thread (runner-worker.ts): one batch at a
// time, each answered by a promise. If the thread dies (it throws, exits, or leaves a run
// unanswered past the run timeout), every waiting run fails at once and so does each later
// one, with UNAVAILABLE (`worker_died`) and the reason, and `onDeath` tells the service, which
// cannot serve any more (see exitForDeadWorker). The thread's start, its runs' ids and its
// death are the WorkerChannel's (runtime/worker-channel.ts).
import type { WorkerDeath } from '../runtime/index.js';
import { WorkerChannel, wholeBuffers } from '../runtime/worker-channel.js';
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

interface Waiter {
  resolve(result: RunResult): void;
  fail(error: Error): void;
}

export class VisionRunner {
  readonly #channel: WorkerChannel<RunnerInfo, RunRequest, RunnerMessage, number, Waiter>;

  private constructor(setup: RunnerSetup, { runTimeoutMs = 0 }: VisionRunnerOptions) {
    this.#channel = new WorkerChannel(new URL('./runner-worker.js', import.meta.url), setup, {
      what: 'the vision thread',
      model: 'the vision model',
      service: 'the encoder',
      stallTimeoutMs: runTimeoutMs,
      receive: (message) => {
        const waiter = this.#channel.take(message.id);
        if (message.kind === 'done') {
          waiter?.resolve({ blocks: message.blocks, computeMs: message.computeMs });
        } else {
          waiter?.fail(new Error(`vision run failed: ${message.message}`));
        }
      },
    });
  }

  /** Starts the thread and waits until the model is loaded (or fails to). */
  static async start(setup: RunnerSetup, options: VisionRunnerOptions = {}): Promise<VisionRunner> {
    const runner = new VisionRunner(setup, options);
    await runner.#channel.ready;
    return runner;
  }

  get info(): RunnerInfo {
    return this.#channel.info;
  }

  /** Called once if the thread dies, before the waiting runs fail. */
  get onDeath(): ((death: WorkerDeath) => void) | undefined {
    return this.#channel.onDeath;
  }

  set onDeath(onDeath: ((death: WorkerDeath) => void) | undefined) {
    this.#channel.onDeath = onDeath;
  }

  /**
   * Encodes `subImages` in one run (padded to the largest by encodeImages), each block in the
   * dtype given for it. The sub-images' pixels move to the thread (those filling their buffer
   * whole): the caller must not read them afterwards.
   */
  run(subImages: SubImage[], dtypes: EmbeddingDtype[]): Promise<RunResult> {
    return new Promise<RunResult>((resolve, reject) => {
      const id = this.#channel.nextId();
      const request: RunRequest = {
        kind: 'run',
        id,
        subImages: subImages.map(({ height, width, pixels }) => ({ height, width, pixels })),
        dtypes,
      };
      const transfer = wholeBuffers(subImages.map((s) => s.pixels));
      this.#channel.send(id, { resolve, fail: reject }, request, transfer);
    });
  }

  close(): Promise<void> {
    return this.#channel.close();
  }

  /** Resolves when the thread has ended, for whatever reason. */
  get ended(): Promise<void> {
    return this.#channel.ended;
  }
}
