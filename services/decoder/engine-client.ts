// The gRPC thread's handle on the engine thread (engine-worker.ts; what they say to each other:
// protocol.ts). Commands go in (add, abort); step reports come out and are routed to each
// request's own event queue, so RPC handlers never touch engine state.
//
// A failed step fails the sequences the engine aborted for it (INTERNAL, `step_failed`); the
// engine goes on. A dead thread (it throws, exits, or leaves requests without a step past the
// step timeout) fails every request at once and each later one (UNAVAILABLE, `worker_died`),
// and `onDeath` tells the service, which cannot serve any more (see exitForDeadWorker).
import type { Worker } from 'node:worker_threads';
import {
  internal,
  startWorker,
  unavailable,
  WorkerWatch,
  type ServiceError,
  type WorkerDeath,
} from '../runtime/index.js';
import type {
  EngineCommand,
  EngineInfo,
  EngineLoad,
  EngineMessage,
  EngineRequest,
  EngineSetup,
  RejectReason,
  StepStats,
  TokenEvent,
} from './protocol.js';

export type { EngineInfo, EngineLoad, StepStats } from './protocol.js';

export class EngineRejectedError extends Error {
  override readonly name = 'EngineRejectedError';
  constructor(
    readonly reason: RejectReason,
    message: string,
  ) {
    super(message);
  }
}

/** What a request's stream receives: its tokens, or the failure that ends it (to send as is). */
export type RequestEvent =
  { kind: 'token'; event: TokenEvent } | { kind: 'error'; error: ServiceError };

interface Listener {
  push(event: RequestEvent): void;
  accepted?: { resolve(): void; reject(error: Error): void };
}

export interface EngineClientOptions {
  /**
   * Longest the engine thread may leave requests without a message (a step, an acceptance)
   * before it counts as stuck (dead), ms; 0: no limit.
   */
  stepTimeoutMs?: number;
}

export class EngineClient {
  readonly #listeners = new Map<string, Listener>();
  #load: EngineLoad = { waiting: 0, running: 0, kvCacheUsage: 0 };
  #dead: Error | undefined;
  readonly #watch: WorkerWatch;
  onStep: ((step: StepStats) => void) | undefined;
  /** Called once if the thread dies, before the requests fail. */
  onDeath: ((death: WorkerDeath) => void) | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
    { stepTimeoutMs = 0 }: EngineClientOptions,
  ) {
    this.#watch = new WorkerWatch(worker, {
      what: 'the decoder engine thread',
      stallTimeoutMs: stepTimeoutMs,
      onDeath: (death) => this.#die(death),
    });
    worker.on('message', (message: EngineMessage) => {
      // Too late: the thread was declared stuck, and every request failed with it.
      if (!this.#watch.heard(this.#listeners.size > 0)) return;
      this.#receive(message);
      if (this.#listeners.size === 0) this.#watch.idle();
    });
  }

  static async start(setup: EngineSetup, options: EngineClientOptions = {}): Promise<EngineClient> {
    const { worker, info } = await startWorker<EngineInfo>(
      new URL('./engine-worker.js', import.meta.url),
      setup,
      'the decoder engine thread',
    );
    return new EngineClient(worker, info, options);
  }

  get load(): EngineLoad {
    return this.#load;
  }

  /**
   * Queues `request`; `push` then receives its events until one is finished. Resolves once
   * the engine accepted it; rejects with EngineRejectedError (queue full) otherwise.
   */
  add(request: EngineRequest, push: (event: RequestEvent) => void): Promise<void> {
    if (this.#dead) return Promise.reject(this.#dead);
    return new Promise<void>((resolve, reject) => {
      this.#listeners.set(request.id, { push, accepted: { resolve, reject } });
      // The buffer of the image rows moves to the engine thread.
      this.worker.postMessage({ kind: 'add', request } satisfies EngineCommand, [
        request.imageRows.buffer as ArrayBuffer,
      ]);
      this.#watch.expect();
    });
  }

  /** Ends a request now (its slot is freed); its stream receives nothing more. */
  abort(id: string): void {
    const listener = this.#listeners.get(id);
    if (!listener) return;
    this.#listeners.delete(id);
    listener.accepted?.reject(new Error(`request ${id} was aborted`));
    if (this.#listeners.size === 0) this.#watch.idle();
    if (!this.#dead) this.worker.postMessage({ kind: 'abort', id } satisfies EngineCommand);
  }

  async close(): Promise<void> {
    this.#dead ??= new Error('the decoder is shutting down');
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
    const error = unavailable(
      `the text model cannot run: ${death.message}; the decoder is exiting to be restarted`,
      'worker_died',
    );
    this.#dead ??= error;
    this.onDeath?.(death);
    for (const [id, listener] of this.#listeners) {
      this.#listeners.delete(id);
      if (listener.accepted) listener.accepted.reject(error);
      else listener.push({ kind: 'error', error });
    }
  }

  #receive(message: EngineMessage): void {
    switch (message.kind) {
      case 'accepted': {
        this.#load = message.load;
        const listener = this.#listeners.get(message.id);
        listener?.accepted?.resolve();
        if (listener) listener.accepted = undefined;
        // Aborted before acceptance: tell the engine now.
        if (!listener)
          this.worker.postMessage({ kind: 'abort', id: message.id } satisfies EngineCommand);
        break;
      }
      case 'rejected': {
        const listener = this.#listeners.get(message.id);
        this.#listeners.delete(message.id);
        listener?.accepted?.reject(new EngineRejectedError(message.reason, message.message));
        break;
      }
      case 'load':
        this.#load = message.load;
        break;
      case 'step':
        this.#load = message.load;
        this.onStep?.(message.step);
        for (const event of message.events) {
          const listener = this.#listeners.get(event.id);
          if (!listener) continue;
          if (event.finished) this.#listeners.delete(event.id);
          listener.push({ kind: 'token', event });
        }
        break;
      case 'step_failed': {
        this.#load = message.load;
        const error = internal(`a decoder step failed: ${message.message}`, 'step_failed');
        for (const id of message.ids) {
          const listener = this.#listeners.get(id);
          this.#listeners.delete(id);
          listener?.push({ kind: 'error', error });
        }
        break;
      }
      default:
        break;
    }
  }
}
