// The batcher's scheduling alone: the run function here records each batch and answers with
// one block per sub-image naming it, so the tests see exactly what ran together.
import { describe, expect, it } from 'vitest';
import type { SubImage } from '../model/index.js';
import { QueueFullError } from '../runtime/index.js';
import { Batcher, OverBudgetError, type BatcherOptions } from './batcher.js';
import type { EmbeddingDtype, RunResult } from './runner.js';

const sub = (width: number, height: number, tag: number): SubImage => ({
  width,
  height,
  pixels: Uint8Array.of(tag),
});
const tagOf = (block: Uint8Array) => block[0]!;

function recorder(options: Partial<BatcherOptions> = {}) {
  const batches: number[][] = [];
  let release: (() => void) | undefined;
  let gate: Promise<void> | undefined;
  const batcher = new Batcher({
    maxBatch: 4,
    maxWaitMs: 0,
    maxQueue: 100,
    maxPadding: 0,
    run: async (subImages: SubImage[], dtypes: EmbeddingDtype[]): Promise<RunResult> => {
      expect(dtypes).toHaveLength(subImages.length);
      batches.push(subImages.map((s) => s.pixels[0]!));
      if (gate) await gate;
      return { blocks: subImages.map((s) => Uint8Array.of(s.pixels[0]!)), computeMs: 1 };
    },
    ...options,
  });
  return {
    batcher,
    batches,
    /** Holds every run until `open` is called. */
    hold() {
      gate = new Promise((resolve) => (release = resolve));
    },
    open() {
      gate = undefined;
      release?.();
    },
  };
}
const never = new AbortController().signal;

describe('Batcher', () => {
  it('runs what waits together, up to maxBatch, in arrival order', async () => {
    const r = recorder({ maxBatch: 3 });
    r.hold();
    const first = r.batcher.submit([sub(28, 28, 1)], 'float16', never); // runs alone at once
    const rest = [2, 3, 4, 5, 6].map((tag) =>
      r.batcher.submit([sub(28, 28, tag)], 'float16', never),
    );
    expect(r.batcher.queueDepth).toBe(5);
    r.open();
    const results = await Promise.all([first, ...rest]);
    expect(results.map((e) => tagOf(e.blocks[0]!))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(r.batches).toEqual([[1], [2, 3, 4], [5, 6]]);
  });

  it('waits up to maxWaitMs for a batch to fill, and no longer once it is full', async () => {
    const r = recorder({ maxBatch: 2, maxWaitMs: 60_000 });
    const a = r.batcher.submit([sub(28, 28, 1)], 'float16', never);
    await new Promise((resolve) => setImmediate(resolve));
    expect(r.batches).toEqual([]); // waiting for a second sub-image
    const b = r.batcher.submit([sub(28, 28, 2)], 'float16', never);
    await Promise.all([a, b]);
    expect(r.batches).toEqual([[1, 2]]);

    const timed = recorder({ maxBatch: 8, maxWaitMs: 20 });
    const started = performance.now();
    await timed.batcher.submit([sub(28, 28, 3)], 'float16', never);
    expect(performance.now() - started).toBeGreaterThanOrEqual(19);
    expect(timed.batches).toEqual([[3]]);
  });

  it('keeps a request’s sub-images in order across batches', async () => {
    const r = recorder({ maxBatch: 2 });
    r.hold();
    const blocker = r.batcher.submit([sub(28, 28, 9)], 'float16', never);
    const five = r.batcher.submit(
      [1, 2, 3, 4, 5].map((t) => sub(28, 28, t)),
      'float32',
      never,
    );
    r.open();
    await blocker;
    expect((await five).blocks.map(tagOf)).toEqual([1, 2, 3, 4, 5]);
    expect(r.batches).toEqual([[9], [1, 2], [3, 4], [5]]);
  });

  it('leaves out sizes that would pad the batch beyond maxPadding; they lead the next one', async () => {
    const r = recorder({ maxBatch: 8, maxPadding: 0 });
    r.hold();
    const blocker = r.batcher.submit([sub(28, 28, 9)], 'float16', never);
    const mixed = [sub(28, 28, 1), sub(56, 56, 2), sub(28, 28, 3), sub(56, 56, 4)].map((s) =>
      r.batcher.submit([s], 'float16', never),
    );
    r.open();
    await Promise.all([blocker, ...mixed]);
    expect(r.batches).toEqual([[9], [1, 3], [2, 4]]);

    const loose = recorder({ maxBatch: 8, maxPadding: 1 });
    loose.hold();
    const b2 = loose.batcher.submit([sub(28, 28, 9)], 'float16', never);
    const all = [sub(28, 28, 1), sub(56, 56, 2)].map((s) =>
      loose.batcher.submit([s], 'float16', never),
    );
    loose.open();
    await Promise.all([b2, ...all]);
    expect(loose.batches).toEqual([[9], [1, 2]]);
  });

  it('drops a cancelled request before it runs and refuses what does not fit the queue', async () => {
    const r = recorder({ maxBatch: 8, maxQueue: 3 });
    r.hold();
    const blocker = r.batcher.submit([sub(28, 28, 9)], 'float16', never);
    const controller = new AbortController();
    const cancelled = r.batcher.submit(
      [sub(28, 28, 1), sub(28, 28, 2)],
      'float16',
      controller.signal,
    );
    await expect(
      r.batcher.submit([sub(28, 28, 3), sub(28, 28, 4)], 'float16', never),
    ).rejects.toThrow(
      new QueueFullError(
        'encoder queue is full: 2 sub-images waiting, this request adds 2, limit 3',
      ),
    );
    controller.abort(new Error('caller left'));
    await expect(cancelled).rejects.toThrow('caller left');
    expect(r.batcher.queueDepth).toBe(0);
    const later = r.batcher.submit([sub(28, 28, 5)], 'float16', never);
    r.open();
    await Promise.all([blocker, later]);
    expect(r.batches).toEqual([[9], [5]]);
  });

  it('fails every request of a failed batch, then goes on with the next', async () => {
    let calls = 0;
    const batcher = new Batcher({
      maxBatch: 2,
      maxWaitMs: 0,
      maxQueue: 10,
      maxPadding: 0,
      run: async (subImages) => {
        if (calls++ === 0) throw new Error('model crashed');
        return { blocks: subImages.map(() => new Uint8Array(1)), computeMs: 1 };
      },
    });
    await expect(batcher.submit([sub(28, 28, 1)], 'float16', never)).rejects.toThrow(
      'model crashed',
    );
    await expect(batcher.submit([sub(28, 28, 2)], 'float16', never)).resolves.toMatchObject({
      blocks: [new Uint8Array(1)],
    });
  });

  it('fails queued work on close and refuses new work', async () => {
    const r = recorder({ maxBatch: 1 });
    r.hold();
    const running = r.batcher.submit([sub(28, 28, 1)], 'float16', never);
    const queued = r.batcher.submit([sub(28, 28, 2)], 'float16', never);
    r.batcher.close();
    await expect(queued).rejects.toThrow('shutting down');
    await expect(r.batcher.submit([sub(28, 28, 3)], 'float16', never)).rejects.toThrow(
      'shutting down',
    );
    r.open();
    await expect(running).resolves.toBeDefined(); // the running batch finishes
  });

  it('never runs more padded pixels than maxPixels; a sub-image over it alone still runs', async () => {
    // 3 sub-images of 28×28 fit in 2352 pixels, a fourth would not.
    const r = recorder({ maxBatch: 8, maxPixels: 3 * 28 * 28, maxPadding: 1 });
    r.hold();
    const first = r.batcher.submit([sub(28, 28, 1)], 'float16', never);
    const rest = [
      r.batcher.submit(
        [2, 3, 4, 5].map((tag) => sub(28, 28, tag)),
        'float16',
        never,
      ),
      // 28×56 pads everything with it to 56 wide: with one 28×28 that is already 3136 pixels.
      r.batcher.submit([sub(56, 28, 6)], 'float16', never),
      r.batcher.submit([sub(56, 56, 7)], 'float16', never), // 3136 alone: runs alone
    ];
    r.open();
    await Promise.all([first, ...rest]);
    expect(r.batches).toEqual([[1], [2, 3, 4], [5], [6], [7]]);
  });

  it('takes sub-images only while the run’s estimated memory fits the budget; the run holds it', async () => {
    const r = recorder({
      maxBatch: 8,
      maxPadding: 1,
      memoryBudgetBytes: 250,
      estimateRunBytes: (sizes) => 100 * sizes.length,
    });
    expect(r.batcher.memory).toMatchObject({ limit: 250, used: 0 });
    r.hold();
    const first = r.batcher.submit([sub(28, 28, 1)], 'float16', never);
    expect(r.batcher.memory.used).toBe(100); // the running batch's estimate
    const rest = [
      r.batcher.submit([sub(28, 28, 2), sub(28, 28, 3), sub(28, 28, 4)], 'float16', never),
      r.batcher.submit([sub(28, 28, 5), sub(28, 28, 6)], 'float16', never),
    ];
    r.open();
    await Promise.all([first, ...rest]);
    expect(r.batches).toEqual([[1], [2, 3], [4, 5], [6]]);
    expect(r.batcher.memory.used).toBe(0);
  });

  it('prices the batch as a whole, padding included, and lets a smaller later sub-image in', async () => {
    // Bytes = padded pixels: two 28×28 fit, a 56×56 pads whatever it joins to 56×56.
    const r = recorder({
      maxBatch: 8,
      maxPadding: 1,
      memoryBudgetBytes: 2 * 56 * 56,
      estimateRunBytes: (sizes) =>
        sizes.length *
        Math.max(...sizes.map((s) => s.height)) *
        Math.max(...sizes.map((s) => s.width)),
    });
    r.hold();
    const first = r.batcher.submit([sub(28, 28, 1)], 'float16', never);
    const rest = [2, 3, 4, 5].map((tag) =>
      r.batcher.submit([tag === 3 ? sub(56, 56, tag) : sub(28, 28, tag)], 'float16', never),
    );
    r.open();
    await Promise.all([first, ...rest]);
    // [2, 3] is 2 × 56² (fits); 4 would make 3 × 56². Then [4, 5]: 2 × 28².
    expect(r.batches).toEqual([[1], [2, 3], [4, 5]]);
  });

  it('refuses a request with a sub-image whose run alone exceeds the whole budget', async () => {
    const r = recorder({
      memoryBudgetBytes: 28 * 28,
      estimateRunBytes: (sizes) => sizes.length * sizes[0]!.height * sizes[0]!.width,
    });
    const refused = r.batcher.submit([sub(28, 28, 1), sub(56, 28, 2)], 'float16', never);
    await expect(refused).rejects.toThrow(OverBudgetError);
    await expect(refused).rejects.toThrow(
      /sub-image 1 \(56x28\) needs about 0\.0 MiB \(estimated\), more than the whole memory budget of 0\.0 MiB/,
    );
    expect(r.batcher.queueDepth).toBe(0);
    expect(r.batches).toEqual([]);
    await r.batcher.submit([sub(28, 28, 3)], 'float16', never);
    expect(r.batches).toEqual([[3]]);
  });

  it('has no memory bound without a budget', () => {
    expect(recorder().batcher.memory).toMatchObject({ limit: Infinity, used: 0 });
  });
});
