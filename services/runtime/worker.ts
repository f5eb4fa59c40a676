// The model threads of the encoder and the decoder: starting one that loads something slow (a
// model) before it can serve, watching it while it serves, and what the process does when it
// dies.
//
// Starting: the thread's first message says { kind: 'ready', info } or { kind: 'failed',
// message }. Serving: a thread that throws, exits, or keeps waiting work unanswered for longer
// than its stall limit is dead (WorkerWatch); every call waiting on it fails with UNAVAILABLE
// (`worker_died`) and the process cannot serve any more, so it says NOT_SERVING, logs
// `worker_died` and exits with WORKER_DIED_EXIT_CODE for its supervisor to restart it
// (exitForDeadWorker).
//
// Every such thread ends itself (process.exit in the thread) when sent STOP_WORKER. A stalled
// thread is sent that rather than terminated: ONNX Runtime's run blocks its thread, and a
// thread terminated, or a process exiting, while a run is in progress aborts the whole
// process (SIGABRT, "terminate called after throwing an instance of 'Napi::Error'") when the
// run returns. A message is handled between runs, so the thread ends cleanly once its run is
// over, and the process exits with its code after that.
import { Worker } from 'node:worker_threads';
import type { GrpcServer } from './grpc-server.js';
import { ServingStatus } from './health.js';
import type { Logger } from './logger.js';

/** Exit code of a process whose model thread died (EX_SOFTWARE). */
export const WORKER_DIED_EXIT_CODE = 70;

/**
 * Longest a process whose model thread died waits for what can still finish and for the thread
 * to end, ms. A stalled thread still in its model run by then cannot end cleanly, and the
 * process kills itself (SIGKILL) instead of exiting.
 */
export const WORKER_DIED_EXIT_WITHIN_MS = 5_000;

/** The message that makes a model thread end itself, between two runs. */
export const STOP_WORKER = { kind: 'stop' } as const;
export type StopWorker = typeof STOP_WORKER;

/** How a model thread ended without being asked to. */
export interface WorkerDeath {
  /** The thread, as its owner names it ('the vision thread'). */
  what: string;
  /** One line for logs and callers: "the vision thread exited (code 1)". */
  message: string;
  /** The thread's exit code, when it exited. */
  exitCode?: number;
  /** What the thread threw, when it threw (ERR_WORKER_OUT_OF_MEMORY included). */
  error?: Error;
  /** When it was declared stuck: how long work had waited on it without an answer, ms. */
  stalledMs?: number;
}

export interface WorkerWatchOptions {
  /** The thread, for messages ('the vision thread'). */
  what: string;
  /** Longest the thread may leave work unanswered; 0: no limit. */
  stallTimeoutMs?: number;
  /** Called once, at the thread's death. */
  onDeath(death: WorkerDeath): void;
}

/**
 * Watches a serving model thread: its 'error' or 'exit' (unless `closing()` came first) is its
 * death, and so is a stall — work waiting on it with no message back for `stallTimeoutMs`, a
 * thread stuck in a model run; the watch then reports the death and sends the thread
 * STOP_WORKER (see the file comment). The owner tells the watch about the work: `expect()`
 * when it hands the thread work, `heard(busy)` on each message from it (whether work still
 * waits). A message that arrives after the limit has passed is a stall too, so a run longer
 * than the limit always counts, whichever the event loop sees first.
 */
export class WorkerWatch {
  #death: WorkerDeath | undefined;
  #closing = false;
  #timer: NodeJS.Timeout | undefined;
  #armedAt = 0;
  /** Resolves when the thread has ended (its 'exit'), for whatever reason. */
  readonly ended: Promise<void>;

  constructor(
    private readonly worker: Worker,
    private readonly options: WorkerWatchOptions,
  ) {
    const { what } = options;
    worker.on('error', (error: Error) =>
      this.#die({ what, message: `${what} crashed: ${error.message}`, error }),
    );
    this.ended = new Promise((resolve) =>
      worker.on('exit', (exitCode: number) => {
        this.#die({ what, message: `${what} exited (code ${exitCode})`, exitCode });
        resolve();
      }),
    );
  }

  /** The death, once the thread died (undefined while it serves, and after `closing()`). */
  get death(): WorkerDeath | undefined {
    return this.#death;
  }

  /** Work was handed to the thread: starts the stall clock unless it runs already. */
  expect(): void {
    const limit = this.options.stallTimeoutMs ?? 0;
    if (limit <= 0 || this.#timer !== undefined || this.#death || this.#closing) return;
    this.#armedAt = performance.now();
    this.#timer = setTimeout(() => this.#stalled(), limit);
    this.#timer.unref();
  }

  /**
   * The thread sent a message; `busy`: work still waits on it. Returns false when the message
   * came too late (the thread is now dead and the message must be ignored).
   */
  heard(busy: boolean): boolean {
    if (this.#death) return false;
    if (this.#timer !== undefined) {
      if (performance.now() - this.#armedAt >= this.options.stallTimeoutMs!) {
        this.#stalled();
        return false;
      }
      this.idle();
    }
    if (busy) this.expect();
    return true;
  }

  /** No work waits on the thread any more: stops the stall clock. */
  idle(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The owner ends the thread: what follows is no death. */
  closing(): void {
    this.#closing = true;
    this.idle();
  }

  #stalled(): void {
    const { what, stallTimeoutMs = 0 } = this.options;
    // Timers run on the event loop's millisecond clock: one may fire a fraction early.
    const stalledMs = Math.max(stallTimeoutMs, Math.round(performance.now() - this.#armedAt));
    this.#die({ what, message: `${what} stalled: no answer for ${stalledMs} ms`, stalledMs });
    this.worker.postMessage(STOP_WORKER);
  }

  #die(death: WorkerDeath): void {
    this.idle();
    if (this.#death || this.#closing) return;
    this.#death = death;
    this.options.onDeath(death);
  }
}

export interface ExitForDeadWorkerOptions {
  logger: Logger;
  /** The gRPC server, once registered: its health goes NOT_SERVING at once. */
  server?: GrpcServer;
  /**
   * The started service's graceful stop: calls that do not need the thread may finish (those
   * that do have failed already), then the servers close and traces are flushed. Absent when
   * the thread died before the service started.
   */
  stop?: () => Promise<void>;
  /**
   * Resolves when the thread has ended (WorkerWatch.ended). The process exits only after: one
   * exiting while the thread is still in a model run would abort (see the file comment).
   */
  threadEnded: Promise<void>;
  /** The configuration variable whose limit declared a stall, for the log line. */
  stallSetting?: string;
  /** Longest to wait for `stop` and `threadEnded`; WORKER_DIED_EXIT_WITHIN_MS by default. */
  withinMs?: number;
  exit?: (code: number) => void;
  /** The last resort when the thread never ends: SIGKILL to this process by default. */
  kill?: () => void;
}

/**
 * What a service does when its model thread died: NOT_SERVING, an error line with `event:
 * 'worker_died'`, then `stop`, and once the thread has ended, exit with WORKER_DIED_EXIT_CODE
 * (the logger writes synchronously: nothing logged is lost). All within `withinMs`: a thread
 * still stuck in its run by then cannot end, and the process kills itself instead.
 */
export async function exitForDeadWorker(
  death: WorkerDeath,
  {
    logger,
    server,
    stop,
    threadEnded,
    stallSetting,
    withinMs = WORKER_DIED_EXIT_WITHIN_MS,
    exit = (code) => process.exit(code),
    kill = () => process.kill(process.pid, 'SIGKILL'),
  }: ExitForDeadWorkerOptions,
): Promise<void> {
  const deadline = performance.now() + withinMs;
  server?.health.setAll(ServingStatus.NOT_SERVING);
  logger.error(
    {
      event: 'worker_died',
      worker: death.what,
      ...(death.exitCode !== undefined ? { exitCode: death.exitCode } : {}),
      ...(death.error ? { err: death.error } : {}),
      ...(death.stalledMs !== undefined ? { stalledMs: death.stalledMs } : {}),
      ...(death.stalledMs !== undefined && stallSetting ? { setting: stallSetting } : {}),
      exitingWith: WORKER_DIED_EXIT_CODE,
    },
    `${death.message}; the service cannot serve any more and exits with code ${WORKER_DIED_EXIT_CODE} to be restarted`,
  );
  const stopped = stop?.().catch((error: unknown) => {
    logger.error({ err: error }, 'stopping after the worker died failed');
  });
  if (stopped && !(await beforeDeadline(stopped, deadline)))
    logger.warn({ withinMs }, 'not stopped in time, exiting now');
  if (!(await beforeDeadline(threadEnded, deadline))) {
    logger.error(
      { event: 'worker_stuck', worker: death.what, withinMs },
      `${death.what} is still in its model run after ${withinMs} ms; killing the process`,
    );
    logger.flush();
    kill();
    return;
  }
  logger.flush();
  exit(WORKER_DIED_EXIT_CODE);
}

/** Whether `promise` settles before `deadline` (a performance.now() time). */
async function beforeDeadline(promise: Promise<unknown>, deadline: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise.then(() => true),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), Math.max(0, deadline - performance.now()));
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
