// One model thread and the work waiting on it: what the encoder's vision runner
// (services/encoder/runner.ts) and the decoder's engine client (services/decoder/engine-client.ts)
// share. A WorkerChannel starts the thread and waits until it has loaded its model, keeps the
// work handed to it under keys (request ids), routes the thread's messages to that work through
// its owner's `receive`, and fails every waiting piece of work at once, with one UNAVAILABLE
// (`worker_died`) error, when the thread dies (see worker.ts: WorkerWatch notices the death,
// exitForDeadWorker is what the service does then). Once the thread died, or the channel was
// closed, new work fails at once and nothing more is posted.
//
// The protocol is the owner's, typed by its Command and Message unions; the channel itself
// knows two messages of the thread: the first, { kind: 'ready', info } or { kind: 'failed',
// message } (StartMessage), and STOP_WORKER, which a stalled thread is sent (worker.ts).
//
// Buffers handed to the thread and never read again by the sender move rather than being
// copied: see wholeBuffers.
import { Worker, type TransferListItem } from 'node:worker_threads';
import { unavailable, type ServiceError } from './errors.js';
import { STOP_WORKER, WorkerWatch, type WorkerDeath } from './worker.js';

/**
 * Longest close() waits for the thread to end after its current model run, ms: longer than a
 * step or a batch normally takes, short enough for a shutdown grace period.
 */
const CLOSE_WAIT_MS = 10_000;

/** The thread's first message: its model is loaded (with what the owner needs to know), or not. */
export type StartMessage<Info> =
  { kind: 'ready'; info: Info } | { kind: 'failed'; message: string };

/** Work waiting on the thread. */
export interface Pending {
  /**
   * The thread died, or the channel closed, before the work was done (it is forgotten
   * already); `error` is UNAVAILABLE, to send to the caller as it is.
   */
  fail(error: ServiceError): void;
}

export interface WorkerChannelOptions<Message> {
  /** The thread, for messages and deaths: 'the vision thread'. */
  what: string;
  /** What cannot run once the thread died, for callers: 'the vision model'. */
  model: string;
  /** The service, for callers: 'the encoder'. */
  service: string;
  /**
   * Longest work may wait on the thread with no message from it before the thread counts as
   * stuck (dead), ms; 0: no limit.
   */
  stallTimeoutMs?: number;
  /**
   * Routes one message of the serving thread to its work (`get`, `take`); not called once the
   * thread is dead, nor for a message that came too late (the thread was declared stuck).
   */
  receive(message: Exclude<Message, { kind: 'ready' | 'failed' }>): void;
}

export class WorkerChannel<
  Info,
  Command,
  Message extends { kind: string },
  Key = number,
  Work extends Pending = Pending,
> {
  /** Resolves with the thread's info once its model is loaded; rejects (the thread ended) if not. */
  readonly ready: Promise<Info>;
  /** Resolves when the thread has ended, for whatever reason. */
  readonly ended: Promise<void>;
  /** Called once if the thread dies, before the waiting work fails. */
  onDeath: ((death: WorkerDeath) => void) | undefined;
  readonly #worker: Worker;
  readonly #options: WorkerChannelOptions<Message>;
  readonly #pending = new Map<Key, Work>();
  #info: Info | undefined;
  #watch: WorkerWatch | undefined;
  /** Why new work fails at once: not ready yet, dead or closed; undefined while serving. */
  #refusal: ServiceError | undefined;
  #nextId = 1;

  /** Starts the thread of `url` with `workerData`; `ready` says when (and whether) it serves. */
  constructor(url: URL, workerData: unknown, options: WorkerChannelOptions<Message>) {
    this.#options = options;
    this.#refusal = unavailable(`${options.what} is not ready`);
    this.#worker = new Worker(url, { workerData });
    this.ended = new Promise((resolve) => this.#worker.once('exit', () => resolve()));
    this.ready = this.#start();
  }

  /** What the thread said it was when ready. */
  get info(): Info {
    if (this.#info === undefined) throw new Error(`${this.#options.what} is not ready`);
    return this.#info;
  }

  /** A fresh number (1, 2, ...) to key work by, for protocols whose requests the owner numbers. */
  nextId(): number {
    return this.#nextId++;
  }

  /**
   * Hands the thread work: keeps `work` under `key` until it is taken, posts `command`, moving
   * (not copying) `transfer` — detached on this side from then on — and starts the stall clock.
   * A dead or closed channel fails `work` at once instead, posting (and moving) nothing.
   */
  send(key: Key, work: Work, command: Command, transfer: readonly TransferListItem[] = []): void {
    if (this.#refusal) {
      work.fail(this.#refusal);
      return;
    }
    if (this.#pending.has(key)) throw new Error(`work ${String(key)} is waiting already`);
    this.#pending.set(key, work);
    try {
      this.#worker.postMessage(command, transfer);
    } catch (error) {
      this.#pending.delete(key);
      throw error;
    }
    this.#watch!.expect();
  }

  /** The work waiting under `key`. */
  get(key: Key): Work | undefined {
    return this.#pending.get(key);
  }

  /** Forgets the work under `key` (done, failed or abandoned) and returns it. */
  take(key: Key): Work | undefined {
    const work = this.#pending.get(key);
    this.#pending.delete(key);
    if (this.#pending.size === 0) this.#watch?.idle();
    return work;
  }

  /** Posts a command no work waits on; nothing once the thread is dead or the channel closed. */
  post(command: Command, transfer: readonly TransferListItem[] = []): boolean {
    if (this.#refusal) return false;
    this.#worker.postMessage(command, transfer);
    return true;
  }

  /**
   * Ends the thread: tells it to stop (STOP_WORKER), which it does between model runs, and
   * terminates it only if it has not ended within `waitMs` — a thread terminated inside an
   * ONNX Runtime run aborts the whole process when the run returns (worker.ts). A dead thread
   * has ended, or was told to end after its run. Work still waiting fails, and so does any
   * sent later.
   */
  async close(waitMs = CLOSE_WAIT_MS): Promise<void> {
    this.#refusal ??= unavailable(`${this.#options.service} is shutting down`);
    const dead = this.#watch?.death !== undefined;
    this.#watch?.closing();
    this.#failAll(this.#refusal);
    if (dead) return;
    this.#worker.postMessage(STOP_WORKER);
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([
      this.ended.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), waitMs))),
    ]);
    clearTimeout(timer);
    if (!stopped) await this.#worker.terminate();
  }

  async #start(): Promise<Info> {
    const worker = this.#worker;
    const { what, stallTimeoutMs = 0 } = this.#options;
    const listeners: {
      message?: (message: { kind: string; info?: Info; message?: string }) => void;
      error?: (error: Error) => void;
      exit?: (code: number) => void;
    } = {};
    let info: Info;
    try {
      info = await new Promise<Info>((resolve, reject) => {
        // StartMessage; anything else before it is not the thread's to send.
        listeners.message = (message) => {
          if (message.kind === 'ready') resolve(message.info as Info);
          else if (message.kind === 'failed')
            reject(new Error(`${what} could not load its model: ${message.message}`));
        };
        listeners.error = (error) =>
          reject(
            new Error(`${what} crashed loading its model: ${error.message}`, { cause: error }),
          );
        listeners.exit = (code) =>
          reject(new Error(`${what} exited (code ${code}) loading its model`));
        worker
          .on('message', listeners.message)
          .on('error', listeners.error)
          .on('exit', listeners.exit);
      });
    } catch (error) {
      this.#refusal = unavailable(`${what} did not start: ${(error as Error).message}`);
      await worker.terminate();
      throw error;
    } finally {
      // Only these three: Worker keeps listeners of its own.
      worker
        .off('message', listeners.message!)
        .off('error', listeners.error!)
        .off('exit', listeners.exit!);
    }
    this.#info = info;
    this.#refusal = undefined;
    // Attached before any later event of the thread: this runs in the 'ready' event's microtasks.
    this.#watch = new WorkerWatch(worker, {
      what,
      stallTimeoutMs,
      onDeath: (death) => this.#die(death),
    });
    worker.on('message', (message: Message) => this.#route(message));
    return info;
  }

  #route(message: Message): void {
    if (message.kind === 'ready' || message.kind === 'failed') return;
    // Too late: the thread was declared stuck, and all its work failed with it.
    if (!this.#watch!.heard(this.#pending.size > 0)) return;
    this.#options.receive(message as Exclude<Message, { kind: 'ready' | 'failed' }>);
    if (this.#pending.size === 0) this.#watch!.idle();
  }

  #die(death: WorkerDeath): void {
    const { model, service } = this.#options;
    const error = unavailable(
      `${model} cannot run: ${death.message}; ${service} is exiting to be restarted`,
      'worker_died',
    );
    this.#refusal = error;
    this.onDeath?.(death);
    this.#failAll(error);
  }

  #failAll(error: ServiceError): void {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const work of pending) work.fail(error);
  }
}

/**
 * The buffers of `views` that can move to the thread rather than be copied: each that a view
 * fills whole, once. One a view only covers part of (a slice of a bigger message, Node's
 * Buffer pool) is copied: moving it would detach the rest, which the sender may still hold.
 * The caller must not read the views again once the command with them was sent.
 */
export function wholeBuffers(views: Iterable<ArrayBufferView>): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>();
  for (const view of views) {
    const { buffer } = view;
    if (
      buffer instanceof ArrayBuffer &&
      view.byteOffset === 0 &&
      view.byteLength === buffer.byteLength &&
      buffer.byteLength > 0
    )
      buffers.add(buffer);
  }
  return [...buffers];
}
