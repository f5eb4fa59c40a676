// WorkerChannel on real worker threads: its start (and the load error it surfaces), routing
// replies to their work by id, buffers moved rather than copied, one UNAVAILABLE
// (`worker_died`) failure of all waiting work when the thread dies or stalls, and close.
import { afterEach, describe, expect, it } from 'vitest';
import { ServiceError } from './errors.js';
import { WorkerChannel, wholeBuffers, type Pending } from './worker-channel.js';
import type { WorkerDeath } from './worker.js';

/** A worker thread running `source` (ESM, from a data: URL). */
const script = (source: string) => new URL(`data:text/javascript,${encodeURIComponent(source)}`);

/**
 * Says ready with its workerData, then answers { kind: 'job', id, ms, data? } after `ms` with
 * { kind: 'done', id, bytes, first } (what it received of `data`); { kind: 'exit', code } exits,
 * { kind: 'throw' } throws, { kind: 'hang' } answers nothing, STOP_WORKER ends it; it reports
 * other commands back as { kind: 'heard', command }.
 */
const SERVER = `import { parentPort, workerData } from 'node:worker_threads';
parentPort.postMessage({ kind: 'ready', info: workerData });
parentPort.on('message', (m) => {
  if (m.kind === 'stop') process.exit(0);
  else if (m.kind === 'exit') process.exit(m.code);
  else if (m.kind === 'throw') throw new Error('boom');
  else if (m.kind === 'block') { const end = Date.now() + m.ms; while (Date.now() < end); }
  else if (m.kind === 'job')
    setTimeout(() => parentPort.postMessage({
      kind: 'done', id: m.id, bytes: m.data?.byteLength ?? 0, first: m.data?.[0] ?? -1,
    }), m.ms);
  else if (m.kind !== 'hang') parentPort.postMessage({ kind: 'heard', command: m.kind });
});`;

type Command =
  | { kind: 'job'; id: number; ms: number; data?: Uint8Array }
  | { kind: 'exit'; code: number }
  | { kind: 'throw' }
  | { kind: 'hang' }
  | { kind: 'block'; ms: number }
  | { kind: 'note' };
type Message =
  | { kind: 'ready'; info: { name: string } }
  | { kind: 'failed'; message: string }
  | { kind: 'done'; id: number; bytes: number; first: number }
  | { kind: 'heard'; command: string };

interface Job extends Pending {
  resolve(reply: { bytes: number; first: number }): void;
}

const channels = new Set<{ close(): Promise<void> }>();
afterEach(async () => {
  await Promise.all([...channels].map((c) => c.close()));
  channels.clear();
});

/** A channel on `source` and what it heard, with `job` to hand it a job as a promise. */
function open(source = SERVER, stallTimeoutMs = 0) {
  const heard: string[] = [];
  const deaths: WorkerDeath[] = [];
  const channel = new WorkerChannel<{ name: string }, Command, Message, number, Job>(
    script(source),
    { name: 'test' },
    {
      what: 'the test thread',
      model: 'the test model',
      service: 'the test service',
      stallTimeoutMs,
      receive: (message) => {
        if (message.kind === 'heard') heard.push(message.command);
        else channel.take(message.id)?.resolve({ bytes: message.bytes, first: message.first });
      },
    },
  );
  channel.onDeath = (death) => deaths.push(death);
  channels.add(channel);
  const job = (ms: number, data?: Uint8Array, transfer?: ArrayBuffer[]) =>
    new Promise<{ bytes: number; first: number }>((resolve, reject) => {
      const id = channel.nextId();
      channel.send(
        id,
        { resolve, fail: reject },
        { kind: 'job', id, ms, ...(data ? { data } : {}) },
        transfer,
      );
    });
  return { channel, heard, deaths, job };
}

describe('WorkerChannel: start', () => {
  it("resolves `ready` with the thread's info", async () => {
    const { channel } = open();
    expect(await channel.ready).toEqual({ name: 'test' });
    expect(channel.info).toEqual({ name: 'test' });
  });

  it('rejects naming the thread and its load error, and the thread ends', async () => {
    const failing = open(`import { parentPort } from 'node:worker_threads';
parentPort.postMessage({ kind: 'failed', message: 'no model in /nope' });
setInterval(() => {}, 1000);`);
    await expect(failing.channel.ready).rejects.toThrow(
      'the test thread could not load its model: no model in /nope',
    );
    await failing.channel.ended;
    await expect(failing.job(0)).rejects.toThrow(/did not start/);

    const exiting = open('process.exit(4)');
    await expect(exiting.channel.ready).rejects.toThrow(
      'the test thread exited (code 4) loading its model',
    );
    const crashing = open(`throw new Error('bad import');`);
    const error = await crashing.channel.ready.then(
      () => new Error('started'),
      (e: Error) => e,
    );
    expect(error.message).toBe('the test thread crashed loading its model: bad import');
    expect((error.cause as Error).message).toBe('bad import');
    expect([exiting.deaths, crashing.deaths, failing.deaths]).toEqual([[], [], []]);
  });
});

describe('WorkerChannel: serving', () => {
  it('routes each reply to its work by id, whatever the order', async () => {
    const { channel, job, heard } = open();
    await channel.ready;
    const [slow, fast] = [job(40, Uint8Array.of(7)), job(0, Uint8Array.of(9, 9))];
    expect(await fast).toEqual({ bytes: 2, first: 9 });
    expect(await slow).toEqual({ bytes: 1, first: 7 });
    expect(channel.post({ kind: 'note' })).toBe(true);
    await expect.poll(() => heard).toEqual(['note']);
  });

  it("moves the buffers in the transfer list: the sender's view is detached", async () => {
    const { channel, job } = open();
    await channel.ready;
    const pixels = new Uint8Array(1024).fill(3);
    const reply = job(0, pixels, wholeBuffers([pixels]));
    expect(pixels.byteLength).toBe(0);
    expect(await reply).toEqual({ bytes: 1024, first: 3 });
  });

  it('wholeBuffers: only buffers a view fills whole, each once', () => {
    const whole = new Uint8Array(8);
    const floats = new Float32Array(whole.buffer);
    const part = new Uint8Array(new ArrayBuffer(16), 4, 8);
    const pooled = Buffer.from('small'); // a slice of Node's shared pool
    const shared = new Uint8Array(new SharedArrayBuffer(8));
    expect(wholeBuffers([whole, floats, part, pooled, shared, new Uint8Array(0)])).toEqual([
      whole.buffer,
    ]);
  });

  it('a dead thread fails all waiting work with one UNAVAILABLE error, after onDeath', async () => {
    const { channel, job, deaths } = open();
    await channel.ready;
    const order: string[] = [];
    channel.onDeath = (death) => {
      deaths.push(death);
      order.push('death');
    };
    const waiting = [job(10_000), job(10_000)].map((p) =>
      p.catch((error: ServiceError) => {
        order.push('failed');
        return error;
      }),
    );
    channel.post({ kind: 'exit', code: 3 });
    const [first, second] = await Promise.all(waiting);
    expect(first).toBeInstanceOf(ServiceError);
    expect(first).toBe(second);
    expect(first).toMatchObject({
      code: 14, // UNAVAILABLE
      reason: 'worker_died',
      message:
        'the test model cannot run: the test thread exited (code 3); the test service is exiting to be restarted',
    });
    expect(order).toEqual(['death', 'failed', 'failed']);
    expect(deaths).toEqual([
      { what: 'the test thread', message: 'the test thread exited (code 3)', exitCode: 3 },
    ]);
    await channel.ended;
    // Later work fails at once with the same error, and nothing is posted or moved.
    const pixels = new Uint8Array(4);
    await expect(job(0, pixels, wholeBuffers([pixels]))).rejects.toBe(first);
    expect(pixels.byteLength).toBe(4);
    expect(channel.post({ kind: 'note' })).toBe(false);
  });

  it('a thread that throws is dead with its error', async () => {
    const { channel, job, deaths } = open();
    await channel.ready;
    const waiting = job(10_000);
    channel.post({ kind: 'throw' });
    await expect(waiting).rejects.toThrow(
      'the test model cannot run: the test thread crashed: boom; the test service is exiting to be restarted',
    );
    expect(deaths).toHaveLength(1);
    expect(deaths[0]!.error?.message).toBe('boom');
  });

  it('work unanswered past the stall limit kills the thread, which is told to stop', async () => {
    // A limit that a loaded machine's message round trip stays far below.
    const { channel, job, deaths } = open(SERVER, 1000);
    await channel.ready;
    // Answered in time, one after another: no stall.
    expect(await job(0)).toEqual({ bytes: 0, first: -1 });
    expect(await job(0)).toEqual({ bytes: 0, first: -1 });
    const error = await job(10_000).then(
      () => new Error('answered'),
      (e: ServiceError) => e,
    );
    expect(error.message).toMatch(
      /^the test model cannot run: the test thread stalled: no answer for \d+ ms; /,
    );
    expect(deaths).toHaveLength(1);
    expect(deaths[0]!.stalledMs).toBeGreaterThanOrEqual(1000);
    // STOP_WORKER ended it; that exit is no second death.
    await channel.ended;
    expect(deaths).toHaveLength(1);
  });

  it('taken work stops the stall clock', async () => {
    const { channel, deaths } = open(SERVER, 30);
    await channel.ready;
    const id = channel.nextId();
    channel.send(id, { resolve: () => {}, fail: () => {} }, { kind: 'hang' });
    expect(channel.take(id)).toBeDefined();
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(deaths).toEqual([]);
  });

  it('close ends the thread: waiting work and later work fail, and it is no death', async () => {
    const { channel, job, deaths } = open();
    await channel.ready;
    const waiting = expect(job(10_000)).rejects.toThrow('the test service is shutting down');
    await channel.close();
    await waiting;
    await expect(job(0)).rejects.toThrow('the test service is shutting down');
    await channel.ended;
    expect(deaths).toEqual([]);
  });

  it('close lets a thread busy in a run finish it and end by itself, not terminated', async () => {
    const { channel, deaths } = open();
    await channel.ready;
    channel.post({ kind: 'block', ms: 300 });
    const started = performance.now();
    await channel.close();
    // It ended once its "run" was over (STOP_WORKER is handled between runs); terminate()
    // would have stopped the busy thread at once.
    expect(performance.now() - started).toBeGreaterThanOrEqual(250);
    await channel.ended;
    expect(deaths).toEqual([]);
  });

  it('close terminates a thread that does not end within its wait', async () => {
    const { channel } = open();
    await channel.ready;
    channel.post({ kind: 'block', ms: 3000 });
    const started = performance.now();
    await channel.close(100);
    expect(performance.now() - started).toBeLessThan(2500);
    await channel.ended;
  });
});
