// The gRPC thread's handle on the engine thread (engine-worker.ts; what they say to each other:
// protocol.ts). Commands go in (add, abort); step reports come out and are routed to each
// request's own event queue, so RPC handlers never touch engine state.
//
// A failed step fails the sequences the engine aborted for it (INTERNAL, `step_failed`); the
// engine goes on. A dead thread (it throws, exits, or leaves requests without a step past the
// step timeout) fails every request at once and each later one (UNAVAILABLE, `worker_died`),
// and `onDeath` tells the service, which cannot serve any more (see exitForDeadWorker). The
// thread's start, the requests' bookkeeping and its death are the WorkerChannel's
// (runtime/worker-channel.ts).
import { internal, type ServiceError, type WorkerDeath } from '../runtime/index.js';
import { WorkerChannel, wholeBuffers } from '../runtime/worker-channel.js';
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

/** A request's stream; until the engine accepted it, the promise of `add`. */
interface Listener {
  push(event: RequestEvent): void;
  accepted: { resolve(): void; reject(error: Error): void } | undefined;
  fail(error: ServiceError): void;
}

export interface EngineClientOptions {
  /**
   * Longest the engine thread may leave requests without a message (a step, an acceptance)
   * before it counts as stuck (dead), ms; 0: no limit.
   */
  stepTimeoutMs?: number;
}

export class EngineClient {
  readonly #channel: WorkerChannel<EngineInfo, EngineCommand, EngineMessage, string, Listener>;
  #load: EngineLoad = { waiting: 0, running: 0, kvCacheUsage: 0 };
  onStep: ((step: StepStats) => void) | undefined;

  private constructor(setup: EngineSetup, { stepTimeoutMs = 0 }: EngineClientOptions) {
    this.#channel = new WorkerChannel(new URL('./engine-worker.js', import.meta.url), setup, {
      what: 'the decoder engine thread',
      model: 'the text model',
      service: 'the decoder',
      stallTimeoutMs: stepTimeoutMs,
      receive: (message) => this.#receive(message),
    });
  }

  static async start(setup: EngineSetup, options: EngineClientOptions = {}): Promise<EngineClient> {
    const client = new EngineClient(setup, options);
    await client.#channel.ready;
    return client;
  }

  get info(): EngineInfo {
    return this.#channel.info;
  }

  get load(): EngineLoad {
    return this.#load;
  }

  /** Called once if the thread dies, before the requests fail. */
  get onDeath(): ((death: WorkerDeath) => void) | undefined {
    return this.#channel.onDeath;
  }

  set onDeath(onDeath: ((death: WorkerDeath) => void) | undefined) {
    this.#channel.onDeath = onDeath;
  }

  /**
   * Queues `request`; `push` then receives its events until one is finished. Resolves once
   * the engine accepted it; rejects with EngineRejectedError (queue full) otherwise. The
   * buffer of its image rows moves to the engine thread (when they fill it whole): the caller
   * must not read `request.imageRows` afterwards.
   */
  add(request: EngineRequest, push: (event: RequestEvent) => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const listener: Listener = {
        push,
        accepted: { resolve, reject },
        fail(error) {
          if (this.accepted) this.accepted.reject(error);
          else push({ kind: 'error', error });
        },
      };
      this.#channel.send(
        request.id,
        listener,
        { kind: 'add', request },
        wholeBuffers([request.imageRows]),
      );
    });
  }

  /** Ends a request now (its slot is freed); its stream receives nothing more. */
  abort(id: string): void {
    const listener = this.#channel.take(id);
    if (!listener) return;
    listener.accepted?.reject(new Error(`request ${id} was aborted`));
    this.#channel.post({ kind: 'abort', id });
  }

  close(): Promise<void> {
    return this.#channel.close();
  }

  /** Resolves when the thread has ended, for whatever reason. */
  get ended(): Promise<void> {
    return this.#channel.ended;
  }

  #receive(message: Exclude<EngineMessage, { kind: 'ready' | 'failed' }>): void {
    switch (message.kind) {
      case 'accepted': {
        this.#load = message.load;
        const listener = this.#channel.get(message.id);
        listener?.accepted?.resolve();
        if (listener) listener.accepted = undefined;
        // Aborted before acceptance: tell the engine now.
        else this.#channel.post({ kind: 'abort', id: message.id });
        break;
      }
      case 'rejected':
        this.#channel
          .take(message.id)
          ?.accepted?.reject(new EngineRejectedError(message.reason, message.message));
        break;
      case 'load':
        this.#load = message.load;
        break;
      case 'step':
        this.#load = message.load;
        this.onStep?.(message.step);
        for (const event of message.events) {
          const listener = event.finished
            ? this.#channel.take(event.id)
            : this.#channel.get(event.id);
          listener?.push({ kind: 'token', event });
        }
        break;
      case 'step_failed': {
        this.#load = message.load;
        const error = internal(`a decoder step failed: ${message.message}`, 'step_failed');
        for (const id of message.ids) this.#channel.take(id)?.push({ kind: 'error', error });
        break;
      }
      default:
        break;
    }
  }
}
