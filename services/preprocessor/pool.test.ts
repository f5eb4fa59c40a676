// The pool's admission (threads, memory budget, queue) and cancellation, with a stand-in worker
// whose tasks take as long as their first byte says (× 10 ms) and report their thread.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_IMAGE_PROCESSOR_CONFIG } from '../model/index.js';
import { MemoryBudget, QueueFullError } from '../runtime/index.js';
import { BudgetExhaustedError, OverBudgetError, PreprocessPool, type PoolJob } from './pool.js';

const dir = mkdtempSync(join(tmpdir(), 'loupe-pool-'));
const worker = join(dir, 'worker.mjs');
writeFileSync(
  worker,
  `import { threadId } from 'node:worker_threads';
   export default async ({ image }) => {
     await new Promise((resolve) => setTimeout(resolve, image[0] * 10));
     return { ok: false, reason: 'done', message: String(threadId) };
   };`,
);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pools: PreprocessPool[] = [];
afterEach(async () => {
  await Promise.all(pools.splice(0).map((pool) => pool.close()));
});

function pool(workers: number, maxQueue: number, budget: MemoryBudget): PreprocessPool {
  const p = new PreprocessPool({
    workers,
    maxQueue,
    budget,
    filename: pathToFileURL(worker).href,
    setup: {
      processorConfig: DEFAULT_IMAGE_PROCESSOR_CONFIG,
      limits: { maxBytes: 1, maxPixels: 1, maxFrames: 1 },
    },
  });
  pools.push(p);
  return p;
}

const job = (tens: number, cost: number, held = 0): PoolJob => ({
  image: new Uint8Array([tens]),
  split: false,
  cost,
  held,
});
const never = () => new AbortController().signal;
const thread = (outcome: { ok: boolean; message?: string }) => (outcome.ok ? '' : outcome.message);

describe('PreprocessPool', () => {
  it('runs as many images as it has threads, the rest in order', async () => {
    const budget = new MemoryBudget(1000);
    const p = pool(2, 10, budget);
    const runs = [5, 5, 1, 1].map((tens) => p.run(job(tens, 10), never()));
    expect([p.running, p.queueDepth, budget.used]).toEqual([2, 2, 20]);
    await Promise.all(runs);
    await expect.poll(() => budget.used).toBe(0);
  });

  it('starts an image only when its cost fits what the budget has left', async () => {
    const budget = new MemoryBudget(100);
    const p = pool(4, 10, budget);
    const first = p.run(job(5, 60), never());
    const second = p.run(job(1, 60), never()); // a thread is free, the memory is not
    expect([p.running, p.queueDepth, budget.used]).toEqual([1, 1, 60]);
    await first;
    await second;
    await expect.poll(() => budget.used).toBe(0);
  });

  it('refuses at once what could never fit, and what could not start if it waited', async () => {
    const budget = new MemoryBudget(100);
    const p = pool(1, 10, budget);
    await expect(p.run(job(1, 90, 20), never())).rejects.toThrow(OverBudgetError);
    const running = p.run(job(5, 50), never());
    // Waiting holds 30 (its request's bytes); with the largest waiting cost, 30 + 60 fits...
    const waits = p.run(job(1, 60, 30), never());
    // ...but another 30 held would leave no room for that 60 to ever start.
    await expect(p.run(job(1, 10, 30), never())).rejects.toThrow(BudgetExhaustedError);
    await Promise.all([running, waits]);
  });

  it('refuses beyond the queue bound', async () => {
    const p = pool(1, 1, new MemoryBudget(1000));
    const runs = [p.run(job(3, 1), never()), p.run(job(1, 1), never())];
    await expect(p.run(job(1, 1), never())).rejects.toThrow(
      new QueueFullError('preprocessor queue is full (2 images queued or running, limit 2)'),
    );
    await Promise.all(runs);
  });

  it('a cancelled waiting image leaves the queue at once', async () => {
    const budget = new MemoryBudget(1000);
    const p = pool(1, 5, budget);
    const running = p.run(job(3, 10), never());
    const controller = new AbortController();
    const waiting = p.run(job(1, 10), controller.signal);
    controller.abort(new Error('gone'));
    await expect(waiting).rejects.toThrow('gone');
    expect(p.queueDepth).toBe(0);
    await running;
  });

  it('a cancelled running image answers at once, keeps its thread and its reservation until it ends', async () => {
    const budget = new MemoryBudget(1000);
    const p = pool(1, 5, budget);
    const before = thread(await p.run(job(0, 1), never()));
    const controller = new AbortController();
    const started = performance.now();
    const cancelled = p.run(job(30, 100), controller.signal);
    const next = p.run(job(0, 100), never());
    setTimeout(() => controller.abort(new Error('caller left')), 20);
    await expect(cancelled).rejects.toThrow('caller left');
    expect(performance.now() - started).toBeLessThan(250);
    // The work goes on: its memory stays reserved, the next image waits for the thread.
    expect([budget.used, p.running, p.queueDepth]).toEqual([100, 1, 1]);
    // The same thread (not a terminated and replaced one) then runs the next image.
    expect(thread(await next)).toBe(before);
    expect(performance.now() - started).toBeGreaterThan(280);
    await expect.poll(() => budget.used).toBe(0);
  });
});
