// The gRPC thread's handle on the engine thread (engine-worker.ts). Commands go in (add,
// abort); step reports come out and are routed to each request's own event queue, so RPC
// handlers never touch engine state.
import type { Worker } from 'node:worker_threads';
import { startWorker } from '../runtime/index.js';
import type { EngineRequest, TokenEvent } from './engine.js';
import type { EngineSetup } from './engine-worker.js';

export interface EngineLoad {
  waiting: number;
  running: number;
  /** Share of KV slots reserved, [0, 1]. */
  kvCacheUsage: number;
}

export interface EngineInfo {
  vocabSize: number;
  hiddenSize: number;
  imageTokenId: number;
  eosTokenIds: number[];
  /** `float32`, `float16`, `gptq-4bit-g128-sym`, ... */
  weightFormat: string;
  /** Bytes of the text model's weights as loaded (quantized ones as stored). */
  weightBytes: number;
  /** A quantized checkpoint's packed weights file and whether it was reused. */
  packedWeights?: { path: string; reused: boolean };
}

export type EngineCommand = { kind: 'add'; request: EngineRequest } | { kind: 'abort'; id: string };

export type EngineMessage =
  | { kind: 'ready'; info: EngineInfo }
  | { kind: 'failed'; message: string }
  | { kind: 'accepted'; id: string; load: EngineLoad }
  | { kind: 'rejected'; id: string; reason: 'queue_full' | 'invalid'; message: string }
  | { kind: 'load'; load: EngineLoad }
  | {
      kind: 'step';
      step: { kind: 'prefill' | 'decode'; batch: number; tokens: number; ms: number };
      events: TokenEvent[];
      load: EngineLoad;
    }
  | { kind: 'step_failed'; message: string; ids: string[]; load: EngineLoad };

export class EngineRejectedError extends Error {
  override readonly name = 'EngineRejectedError';
  constructor(
    readonly reason: 'queue_full' | 'invalid',
    message: string,
  ) {
    super(message);
  }
}

/** What a request's stream receives: its tokens, or the engine's failure. */
export type RequestEvent =
  { kind: 'token'; event: TokenEvent } | { kind: 'error'; message: string };

interface Listener {
  push(event: RequestEvent): void;
  accepted?: { resolve(): void; reject(error: Error): void };
}

export interface StepStats {
  kind: 'prefill' | 'decode';
  batch: number;
  tokens: number;
  ms: number;
}

export class EngineClient {
  readonly #listeners = new Map<string, Listener>();
  #load: EngineLoad = { waiting: 0, running: 0, kvCacheUsage: 0 };
  #dead: Error | undefined;
  onStep: ((step: StepStats) => void) | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
  ) {
    worker.on('message', (message: EngineMessage) => this.#receive(message));
    const die = (error: Error) => {
      this.#dead ??= error;
      for (const [id, listener] of this.#listeners) {
        listener.accepted?.reject(this.#dead);
        listener.push({ kind: 'error', message: this.#dead.message });
        this.#listeners.delete(id);
      }
    };
    worker.on('error', (error) => die(new Error(`decoder engine crashed: ${error.message}`)));
    worker.on('exit', (code) => die(new Error(`decoder engine exited (code ${code})`)));
  }

  static async start(setup: EngineSetup): Promise<EngineClient> {
    const { worker, info } = await startWorker<EngineInfo>(
      new URL('./engine-worker.js', import.meta.url),
      setup,
      'the decoder engine',
    );
    return new EngineClient(worker, info);
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
    });
  }

  /** Ends a request now (its slot is freed); its stream receives nothing more. */
  abort(id: string): void {
    const listener = this.#listeners.get(id);
    if (!listener) return;
    this.#listeners.delete(id);
    listener.accepted?.reject(new Error(`request ${id} was aborted`));
    if (!this.#dead) this.worker.postMessage({ kind: 'abort', id } satisfies EngineCommand);
  }

  async close(): Promise<void> {
    this.#dead ??= new Error('the decoder is shutting down');
    await this.worker.terminate();
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
      case 'step_failed':
        this.#load = message.load;
        for (const id of message.ids) {
          const listener = this.#listeners.get(id);
          this.#listeners.delete(id);
          listener?.push({ kind: 'error', message: message.message });
        }
        break;
      default:
        break;
    }
  }
}
