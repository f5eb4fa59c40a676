// Model threads: noticing a thread's death (a throw, an exit, a stall), and what the
// process does then — on real worker threads, with exitForDeadWorker's exit taken over.
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import type { GrpcServer } from './grpc-server.js';
import { HealthRegistry, ServingStatus } from './health.js';
import { createLogger } from './logger.js';
import {
  exitForDeadWorker,
  STOP_WORKER,
  WORKER_DIED_EXIT_CODE,
  WorkerWatch,
  type WorkerDeath,
} from './worker.js';

/** A worker thread running `source` (CommonJS-free ESM, from a data: URL). */
const script = (source: string) => new URL(`data:text/javascript,${encodeURIComponent(source)}`);
const READY = `import { parentPort } from 'node:worker_threads';
parentPort.postMessage({ kind: 'ready', info: { answer: 42 } });`;

/** Listens and never answers (a listening port keeps the thread alive), but for STOP_WORKER. */
const SILENT = `parentPort.on('message', (m) => { if (m.kind === 'stop') process.exit(0); });`;

const workers = new Set<Worker>();
afterEach(async () => {
  await Promise.all([...workers].map((w) => w.terminate()));
  workers.clear();
});

/** A thread running `body` once it has said it is ready (starting one: worker-channel.test.ts). */
async function serving(body: string): Promise<Worker> {
  const worker = new Worker(script(`${READY}\n${body}`));
  workers.add(worker);
  const first = await new Promise<unknown>((resolve) => worker.once('message', resolve));
  expect(first).toEqual({ kind: 'ready', info: { answer: 42 } });
  return worker;
}

/** Watches `worker`; resolves with its death and how often onDeath was called by its exit. */
function watched(worker: Worker, stallTimeoutMs = 0) {
  const deaths: WorkerDeath[] = [];
  let watch!: WorkerWatch;
  const died = new Promise<WorkerDeath>((resolve) => {
    watch = new WorkerWatch(worker, {
      what: 'the test thread',
      stallTimeoutMs,
      onDeath: (death) => {
        deaths.push(death);
        resolve(death);
      },
    });
  });
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  return { watch, died, exited, deaths };
}

/** Blocks this thread for `ms` (a thread busy elsewhere: no timer can run meanwhile). */
function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

describe('WorkerWatch', () => {
  it('a thread that throws is dead once, with its error', async () => {
    const worker = await serving(`parentPort.on('message', () => { throw new Error('boom'); });`);
    const { died, exited, deaths } = watched(worker);
    worker.postMessage('go');
    const death = await died;
    expect(death).toMatchObject({
      what: 'the test thread',
      message: 'the test thread crashed: boom',
    });
    expect(death.error?.message).toBe('boom');
    await exited;
    expect(deaths).toHaveLength(1);
  });

  it('a thread that exits is dead, with its exit code', async () => {
    const worker = await serving(`parentPort.on('message', () => process.exit(3));`);
    const { died } = watched(worker);
    worker.postMessage('go');
    expect(await died).toEqual({
      what: 'the test thread',
      message: 'the test thread exited (code 3)',
      exitCode: 3,
    });
  });

  it('a thread ended by its owner after closing() is not dead', async () => {
    const worker = await serving(SILENT);
    const { watch, exited, deaths } = watched(worker, 10);
    watch.expect();
    watch.closing();
    await worker.terminate();
    await exited;
    expect(deaths).toEqual([]);
    expect(watch.death).toBeUndefined();
  });

  it('a thread that leaves work unanswered past the limit is dead, and told to stop', async () => {
    const worker = await serving(SILENT);
    const { watch, died, exited, deaths } = watched(worker, 20);
    watch.expect();
    const death = await died;
    expect(death.message).toMatch(/^the test thread stalled: no answer for \d+ ms$/);
    expect(death.stalledMs).toBeGreaterThanOrEqual(20);
    expect(watch.death).toBe(death);
    // It ended itself on STOP_WORKER; that exit is no second death.
    expect(await exited).toBe(0);
    await watch.ended;
    expect(deaths).toHaveLength(1);
    expect(watch.heard(false)).toBe(false);
  });

  it('an answer after the limit is a stall too, even when it is seen before the timer', async () => {
    const worker = await serving(SILENT);
    const { watch, deaths } = watched(worker, 10);
    watch.expect();
    busy(30);
    expect(watch.heard(true)).toBe(false);
    expect(deaths).toHaveLength(1);
    expect(deaths[0]!.stalledMs).toBeGreaterThanOrEqual(30);
  });

  it('answers in time keep it alive; idle stops the clock', async () => {
    const worker = await serving(`parentPort.on('message', (m) => parentPort.postMessage(m));`);
    const { watch, deaths } = watched(worker, 5_000);
    for (let i = 0; i < 3; i++) {
      watch.expect();
      worker.postMessage(i);
      await new Promise((resolve) => worker.once('message', resolve));
      expect(watch.heard(i < 2)).toBe(true);
    }
    watch.idle();
    expect(deaths).toEqual([]);
    expect(watch.death).toBeUndefined();
  });
});

describe('exitForDeadWorker', () => {
  const death: WorkerDeath = {
    what: 'the test thread',
    message: 'the test thread exited (code 1)',
    exitCode: 1,
  };

  function setup() {
    const lines: Array<Record<string, unknown>> = [];
    const logger = createLogger({
      service: 'test',
      destination: { write: (line: string) => void lines.push(JSON.parse(line)) },
    });
    const health = new HealthRegistry();
    health.set('', ServingStatus.SERVING);
    health.set('loupe.v1.Test', ServingStatus.SERVING);
    const server = { health } as unknown as GrpcServer;
    let exit!: (code: number) => void;
    const exited = new Promise<number>((resolve) => (exit = resolve));
    const threadEnded = Promise.resolve();
    return { lines, logger, health, server, exit, exited, threadEnded };
  }

  it('goes NOT_SERVING, logs worker_died, stops, then exits with 70', async () => {
    const { lines, logger, health, server, exit, exited, threadEnded } = setup();
    const order: string[] = [];
    void exitForDeadWorker(death, {
      logger,
      server,
      threadEnded,
      stop: async () => {
        order.push(`stop while ${ServingStatus[health.get('loupe.v1.Test')!]}`);
      },
      exit: (code) => {
        order.push('exit');
        exit(code);
      },
    });
    expect(await exited).toBe(WORKER_DIED_EXIT_CODE);
    expect(order).toEqual(['stop while NOT_SERVING', 'exit']);
    expect(health.get('')).toBe(ServingStatus.NOT_SERVING);
    expect(lines).toContainEqual(
      expect.objectContaining({
        level: 'error',
        event: 'worker_died',
        worker: 'the test thread',
        exitCode: 1,
        exitingWith: 70,
      }),
    );
  });

  it('exits within its bound when stopping hangs; names the stall setting', async () => {
    const { lines, logger, server, exit, exited, threadEnded } = setup();
    void exitForDeadWorker(
      { what: 'the test thread', message: 'the test thread stalled', stalledMs: 12 },
      {
        logger,
        server,
        threadEnded,
        stop: () => new Promise<void>(() => {}),
        stallSetting: 'LOUPE_TEST_TIMEOUT_MS',
        withinMs: 20,
        exit,
      },
    );
    expect(await exited).toBe(70);
    expect(lines).toContainEqual(
      expect.objectContaining({
        event: 'worker_died',
        stalledMs: 12,
        setting: 'LOUPE_TEST_TIMEOUT_MS',
      }),
    );
    expect(lines.at(-1)).toMatchObject({ level: 'warn', withinMs: 20 });
  });

  it('exits at once when the service had not started', async () => {
    const { lines, logger, exit, exited, threadEnded } = setup();
    void exitForDeadWorker(death, { logger, threadEnded, exit });
    expect(await exited).toBe(70);
    expect(lines.map((l) => l.event)).toEqual(['worker_died']);
  });

  it('waits for the thread to end before exiting, and kills the process if it never does', async () => {
    const { lines, logger, exit, exited } = setup();
    let end!: () => void;
    const order: string[] = [];
    void exitForDeadWorker(death, {
      logger,
      threadEnded: new Promise<void>((resolve) => (end = resolve)),
      stop: async () => {
        order.push('stopped');
        end();
      },
      exit: (code) => {
        order.push('exit');
        exit(code);
      },
    });
    expect(await exited).toBe(70);
    expect(order).toEqual(['stopped', 'exit']);

    let killed!: () => void;
    const kill = new Promise<void>((resolve) => (killed = resolve));
    void exitForDeadWorker(death, {
      logger,
      threadEnded: new Promise<void>(() => {}),
      withinMs: 20,
      exit: () => expect.unreachable('exit while the thread runs'),
      kill: killed,
    });
    await kill;
    expect(lines.at(-1)).toMatchObject({ level: 'error', event: 'worker_stuck', withinMs: 20 });
  });
});

// The watch only needs a Worker's events and postMessage(): a stand-in shows that a stalled
// thread is asked to stop, not terminated (which would abort the process mid-run).
describe('WorkerWatch on a thread that never ends', () => {
  it('reports the stall and sends STOP_WORKER', async () => {
    const posted: unknown[] = [];
    const stand = Object.assign(new EventEmitter(), {
      postMessage: (message: unknown) => posted.push(message),
      terminate: () => expect.unreachable('terminate() on a stalled thread'),
    });
    const died = new Promise<WorkerDeath>((resolve) => {
      new WorkerWatch(stand as unknown as Worker, {
        what: 'the stuck thread',
        stallTimeoutMs: 5,
        onDeath: resolve,
      }).expect();
    });
    expect((await died).stalledMs).toBeGreaterThanOrEqual(5);
    expect(posted).toEqual([STOP_WORKER]);
  });
});
