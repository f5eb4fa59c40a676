// The engine loop over a scripted model runner (no ONNX Runtime, no threads): admission,
// limits, cancellation, failed steps, and the prefix cache.
import { describe, expect, it } from 'vitest';
import { Engine, type StepReport } from './engine.js';
import type { EngineImage, EngineRequest, TokenEvent } from './protocol.js';
import { GREEDY, type SamplingParams } from './sampler.js';
import { QueueFullError } from './scheduler.js';
import {
  FakeClock,
  ScriptedRunner,
  type ScriptedCost,
  type ScriptedRunnerOptions,
} from './scripted-runner.test-helper.js';

const HIDDEN = 4;
const IMAGE = 49;
const SEEDED: SamplingParams = { ...GREEDY, temperature: 1, topP: 0.9, topK: 20 };

function setup(
  runner: ScriptedRunnerOptions = {},
  { maxWaiting = 16, maxPrefillTokens = 24, eosTokenIds = [] as number[], maxStepMs = 0 } = {},
) {
  const r = new ScriptedRunner({ hidden: HIDDEN, imageTokenId: IMAGE, ...runner });
  const engine = new Engine(r, {
    maxWaiting,
    maxPrefillTokens,
    eosTokenIds,
    maxStepMs,
    ...(runner.clock ? { now: runner.clock.now } : {}),
  });
  return { runner: r, engine };
}

/** Ids 1 .. 48 (no image token), seeded. */
function text(n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => 1 + ((i * 7 + seed * 13 + ((i * i) % 11)) % 48));
}

interface ImageSpec {
  /** Where its run of <image> tokens starts in the prompt. */
  at: number;
  rows: number;
  /** Seeds its rows' values; equal seeds give equal rows. */
  seed: number;
  /** Its key; default derived from the seed (equal rows, equal keys). */
  key?: string;
}

function request(
  id: string,
  promptIds: number[],
  {
    maxNewTokens = 8,
    sampling = GREEDY,
    seed = 1n,
    images = [] as ImageSpec[],
    stopTokenIds = [] as number[],
    logprobs = false,
  } = {},
): EngineRequest {
  const prompt = [...promptIds];
  const rows = new Float32Array(images.reduce((n, i) => n + i.rows, 0) * HIDDEN);
  const engineImages: EngineImage[] = [];
  let at = 0;
  for (const image of images) {
    for (let r = 0; r < image.rows; r++) {
      prompt[image.at + r] = IMAGE;
      for (let h = 0; h < HIDDEN; h++) rows[(at + r) * HIDDEN + h] = image.seed + r * 0.25 + h;
    }
    at += image.rows;
    engineImages.push({ rows: image.rows, key: image.key ?? `image-${image.seed}` });
  }
  return {
    id,
    promptIds: prompt,
    imageRows: new Uint8Array(rows.buffer),
    imageDtype: 'float32',
    images: engineImages,
    sampling,
    seed,
    stopTokenIds,
    maxNewTokens,
    logprobs,
    topLogprobs: 0,
  };
}

/** Steps until no work is left; every event by request, and every step's report. */
async function drain(engine: Engine) {
  const events = new Map<string, TokenEvent[]>();
  const reports: StepReport[] = [];
  for (let guard = 0; engine.hasWork; guard++) {
    if (guard > 10_000) throw new Error('the engine does not finish');
    const report = await engine.step();
    if (!report) continue;
    reports.push(report);
    for (const e of report.events) events.set(e.id, [...(events.get(e.id) ?? []), e]);
  }
  const tokens = (id: string) => (events.get(id) ?? []).map((e) => e.token);
  const hits = reports.reduce((n, r) => n + r.prefixHits, 0);
  const queries = reports.reduce((n, r) => n + r.prefixQueries, 0);
  return { events, reports, tokens, hits, queries };
}

/** Runs `requests` one after another (each alone) and returns each one's tokens. */
async function oneByOne(engine: Engine, requests: EngineRequest[]) {
  const out: number[][] = [];
  let hits = 0;
  for (const r of requests) {
    engine.add(r);
    const done = await drain(engine);
    out.push(done.tokens(r.id));
    hits += done.hits;
  }
  return { tokens: out, hits };
}

describe('Engine: admission and limits', () => {
  it('runs requests beyond the slots as slots free up, each getting what it gets alone', async () => {
    const alone = setup({ slots: 1 });
    const expected = (
      await oneByOne(
        alone.engine,
        [0, 1, 2].map((i) => request(`r${i}`, text(10 + i, i))),
      )
    ).tokens;
    const { engine, runner } = setup({ slots: 2 });
    for (const i of [0, 1, 2]) engine.add(request(`r${i}`, text(10 + i, i)));
    expect(engine.load).toEqual({ waiting: 3, running: 0, kvCacheUsage: 0 });
    const first = (await engine.step())!;
    expect(engine.load).toEqual({ waiting: 1, running: 2, kvCacheUsage: 1 });
    const done = await drain(engine);
    const all = [...first.events, ...done.reports.flatMap((r) => r.events)];
    const tokens = (id: string) => all.filter((e) => e.id === id).map((e) => e.token);
    expect([0, 1, 2].map((i) => tokens(`r${i}`))).toEqual(expected);
    for (const i of [0, 1, 2]) {
      const last = done.events.get(`r${i}`)!.at(-1)!;
      expect(last).toMatchObject({ index: 7, finished: 'length' });
      expect(last.timings).toEqual({
        queue: expect.any(Number),
        prefill: expect.any(Number),
        decode: expect.any(Number),
      });
    }
    expect(engine.load).toEqual({ waiting: 0, running: 0, kvCacheUsage: 0 });
    // Decode steps batched both running sequences.
    expect(runner.steps.some((s) => s.decode.length === 2)).toBe(true);
  });

  it('refuses beyond the queue and beyond the context', () => {
    const { engine } = setup({ slots: 1, context: 32 }, { maxWaiting: 1 });
    engine.add(request('a', text(4, 1)));
    engine.add(request('b', text(4, 2)));
    expect(() => engine.add(request('c', text(4, 3)))).toThrow(QueueFullError);
    expect(() => engine.add(request('d', text(30, 3), { maxNewTokens: 3 }))).toThrow(
      'exceed the context of 32',
    );
    expect(engine.load.waiting).toBe(2);
  });

  it('ends a sequence on a stop token or an EOS id, with reason stop', async () => {
    const probe = setup();
    probe.engine.add(request('probe', text(6, 4)));
    const tokens = (await drain(probe.engine)).tokens('probe');
    const { engine } = setup({}, { eosTokenIds: [tokens[3]!] });
    engine.add(request('eos', text(6, 4)));
    engine.add(request('stop', text(6, 4), { stopTokenIds: [tokens[1]!] }));
    const done = await drain(engine);
    expect(done.tokens('eos')).toEqual(tokens.slice(0, 4));
    expect(done.events.get('eos')!.at(-1)!.finished).toBe('stop');
    expect(done.tokens('stop')).toEqual(tokens.slice(0, 2));
    expect(done.events.get('stop')!.at(-1)!.finished).toBe('stop');
  });
});

describe('Engine: greedy steps', () => {
  it('lets the runner pick the tokens only when every sampled row is plain greedy', async () => {
    const prompt = text(20, 3);
    const cases: Array<[string, Partial<EngineRequest>, boolean, { badWords?: boolean }?]> = [
      ['greedy', {}, true],
      ['logprobs', { logprobs: true }, false],
      ['seeded sampling', { sampling: SEEDED }, false],
      ['repetition penalty', { sampling: { ...GREEDY, repetitionPenalty: 1.3 } }, false],
      ['presence penalty', { sampling: { ...GREEDY, presencePenalty: 0.5 } }, false],
      ['logit bias', { logitBias: { ids: [7], bias: [2] } }, false],
      ['bad words', {}, false, { badWords: true }],
    ];
    const run = async (
      overrides: Partial<EngineRequest>,
      greedyTokens: boolean,
      badWords = false,
    ) => {
      const runner = new ScriptedRunner({ hidden: HIDDEN, imageTokenId: IMAGE, greedyTokens });
      const engine = new Engine(runner, {
        maxWaiting: 4,
        maxPrefillTokens: 24,
        eosTokenIds: [],
        ...(badWords ? { badWordsIds: [[45]] } : {}),
      });
      engine.add({ ...request('r', prompt, { maxNewTokens: 6 }), ...overrides });
      const done = await drain(engine);
      return { tokens: done.tokens('r'), greedy: runner.steps.map((s) => s.greedy) };
    };
    for (const [name, overrides, greedy, options] of cases) {
      const picked = await run(overrides, true, options?.badWords);
      const sampled = await run(overrides, false, options?.badWords);
      expect(picked.greedy, name).toEqual(new Array(picked.greedy.length).fill(greedy));
      expect(picked.tokens, name).toHaveLength(6);
      // The runner's tokens (with no logits beside them) are what the engine's argmax gives.
      expect(picked.tokens, name).toEqual(sampled.tokens);
    }
    expect(cases).toHaveLength(7);
  });

  it('takes logits for a step that mixes a greedy row with one asking logprobs', async () => {
    const { runner, engine } = setup({ greedyTokens: true });
    engine.add(request('plain', text(10, 1), { maxNewTokens: 4 }));
    engine.add(request('logprobs', text(10, 2), { maxNewTokens: 4, logprobs: true }));
    const done = await drain(engine);
    expect(done.tokens('plain')).toHaveLength(4);
    expect(runner.steps.some((s) => s.greedy)).toBe(false);
    expect(done.events.get('logprobs')!.every((e) => e.logprob! < 0)).toBe(true);
  });
});

describe('Engine: cancellation and failures', () => {
  it('drops an aborted request, waiting or mid-step, and the others go on unchanged', async () => {
    const b = () => request('b', text(20, 5), { sampling: SEEDED, seed: 9n, maxNewTokens: 12 });
    const alone = await oneByOne(setup().engine, [b()]);

    const { engine, runner } = setup({ slots: 2 });
    engine.add(request('a', text(20, 6), { maxNewTokens: 30 }));
    engine.add(b());
    engine.add(request('waits', text(5, 7)));
    expect(engine.abort('waits')).toBe(true);
    const seen: TokenEvent[] = [];
    const step = async () => {
      const report = await engine.step();
      seen.push(...(report?.events ?? []));
      return report;
    };
    // Both decoding, then `a` is aborted while a step runs.
    while (runner.steps.filter((s) => s.decode.length === 2).length < 2) await step();
    const open = runner.hold();
    const stepping = step();
    expect(engine.abort('a')).toBe(true);
    expect(engine.load).toEqual({ waiting: 0, running: 1, kvCacheUsage: 0.5 });
    open();
    expect((await stepping)!.events.map((e) => e.id)).toEqual(['b']);
    const rest = await drain(engine);
    expect(rest.events.has('a')).toBe(false);
    seen.push(...rest.events.get('b')!);
    expect(seen.filter((e) => e.id === 'waits')).toEqual([]);
    expect(seen.filter((e) => e.id === 'a').length).toBeGreaterThan(0);
    expect(seen.filter((e) => e.id === 'b').map((e) => e.token)).toEqual(alone.tokens[0]);
    expect(engine.abort('a')).toBe(false);
    expect(engine.load).toEqual({ waiting: 0, running: 0, kvCacheUsage: 0 });
  });

  it('a failed step rejects, the engine aborts what was in flight, and the next request runs', async () => {
    const { engine, runner } = setup({ cacheBlocks: 8 });
    engine.add(request('a', text(40, 1)));
    runner.failNext = new Error('the model could not run');
    await expect(engine.step()).rejects.toThrow('the model could not run');
    expect(engine.abortAll()).toEqual(['a']);
    // The blocks the failed step was to save are free again, not cached with garbage.
    expect(engine.prefixCache.stats).toEqual({ used: 0, pinned: 0 });
    engine.add(request('b', text(40, 1)));
    const done = await drain(engine);
    expect(done.tokens('b')).toHaveLength(8);
    expect(done.hits).toBe(0);
  });
});

describe('Engine: prefix cache', () => {
  const CACHE = { slots: 2, cacheBlocks: 64 };

  /**
   * A conversation and its variants, each request made from the answers before it: run on
   * `engine` one at a time. Returns every answer and logprob, and the hits of each request.
   */
  async function scenario(engine: Engine, sampling: SamplingParams) {
    const answers: number[][] = [];
    const logprobs: number[][] = [];
    const hits: number[] = [];
    const run = async (id: string, prompt: number[], extra: Parameters<typeof request>[2] = {}) => {
      engine.add(request(id, prompt, { sampling, seed: 77n, logprobs: true, ...extra }));
      const done = await drain(engine);
      answers.push(done.tokens(id));
      logprobs.push(done.events.get(id)!.map((e) => e.logprob));
      hits.push(done.hits);
      return done.tokens(id);
    };
    const system = text(40, 1);
    const first = await run('turn 1', system, { maxNewTokens: 20 });
    await run('other question', [...system, ...text(10, 2)]);
    const second = await run('turn 2', [...system, ...first, ...text(6, 3)], { maxNewTokens: 20 });
    await run('turn 3', [...system, ...first, ...text(6, 3), ...second, ...text(5, 4)]);
    // An image whose run of tokens (8 .. 37) crosses block boundaries 16 and 32.
    const photo = [{ at: 8, rows: 30, seed: 1 }];
    const withPhoto = text(48, 5);
    await run('image', withPhoto, { images: photo });
    await run('image again', withPhoto, { images: photo }); // hit ends inside the image
    await run('image, follow-up', [...withPhoto, ...text(20, 6)], { images: photo });
    // Same ids, other image: no block holding image tokens may hit.
    await run('other image', withPhoto, { images: [{ at: 8, rows: 30, seed: 2 }] });
    await run('same rows, other key', withPhoto, { images: [{ ...photo[0]!, key: 'other' }] });
    return { answers, logprobs, hits };
  }

  for (const [name, sampling] of [
    ['greedy', GREEDY],
    ['seeded sampling', SEEDED],
  ] as const) {
    it(`gives the same tokens with the cache on and off (${name}, text and images)`, async () => {
      const on = setup(CACHE);
      const off = setup({ ...CACHE, cacheBlocks: 0 });
      const cached = await scenario(on.engine, sampling);
      const computed = await scenario(off.engine, sampling);
      expect(cached.answers).toEqual(computed.answers);
      expect(cached.logprobs).toEqual(computed.logprobs);
      expect(computed.hits.every((h) => h === 0)).toBe(true);
      // turn 2 reuses the system prompt and turn 1's answer (20 generated, 19 in the KV:
      // blocks 0 .. 2); the image resent hits up to the block before its last token, inside
      // the image's run; another image, or the same rows under another key, hit nothing.
      expect(cached.hits).toEqual([0, 32, 48, 80, 0, 32, 48, 0, 0]);
      expect(on.runner.prefilled).toBe(
        off.runner.prefilled - cached.hits.reduce((a, b) => a + b, 0),
      );
      // A hit in the middle of the image: the chunk after it starts at 32 with the rows of
      // image tokens 24 .. 29.
      const resent = on.runner.steps.find(
        (s) => s.loads.length === 2 && s.prefill[0]?.tokens.length === 16,
      )!;
      expect(resent.prefill[0]!.start).toBe(32);
      expect(resent.prefill[0]!.imageRows.length).toBe(6 * HIDDEN);
    });
  }

  it('counts prompt tokens looked up and found, and never reuses the last prompt token', async () => {
    const { engine, runner } = setup({ cacheBlocks: 8 }, { maxPrefillTokens: 64 });
    const prompt = text(32, 8);
    const queries: number[] = [];
    const hits: number[] = [];
    for (const p of [prompt, prompt, [...prompt, 9]]) {
      engine.add(request('r', p, { maxNewTokens: 1 }));
      const done = await drain(engine);
      queries.push(done.queries);
      hits.push(done.hits);
    }
    expect(queries).toEqual([32, 32, 33]);
    // The same 32 tokens again: block 1 holds the last one, which must be computed.
    expect(hits).toEqual([0, 16, 32]);
    expect(runner.steps.map((s) => s.prefill[0]!.start)).toEqual([0, 16, 32]);
    const off = setup();
    off.engine.add(request('r', prompt, { maxNewTokens: 1 }));
    expect((await drain(off.engine)).queries).toBe(0);
  });

  it('evicts the least recently used blocks within its budget, a prefix tail first', async () => {
    const { engine } = setup({ cacheBlocks: 4 });
    const hit = async (prompt: number[]) => {
      engine.add(request('r', prompt, { maxNewTokens: 1 }));
      const done = await drain(engine);
      expect(engine.prefixCache.stats.used).toBeLessThanOrEqual(4);
      return done.hits;
    };
    const [a, b] = [text(48, 1), text(48, 2)];
    expect(await hit(a)).toBe(0); // saves a's 3 blocks
    expect(await hit(b)).toBe(0); // saves b's 3: a's tail (blocks 2, then 1) makes room
    expect(await hit([...a, 5])).toBe(16); // a's head is left; its tail is saved again...
    expect(await hit([...b, 5])).toBe(16); // ... over b's tail
    expect(engine.prefixCache.stats).toEqual({ used: 4, pinned: 0 });
  });

  it('never evicts the blocks a step loads, even for that step', async () => {
    const { engine } = setup({ cacheBlocks: 2 });
    const shared = text(32, 3);
    engine.add(request('a', shared, { maxNewTokens: 1 }));
    await drain(engine);
    engine.add(request('b', [...shared, ...text(20, 4)], { maxNewTokens: 1 }));
    expect((await drain(engine)).hits).toBe(32); // and b's own blocks found no room
    engine.add(request('c', [...shared, ...text(20, 5)], { maxNewTokens: 1 }));
    expect((await drain(engine)).hits).toBe(32);
  });

  it('cancelling a request while it loads shared blocks leaves the others correct', async () => {
    const shared = text(40, 1);
    const c = () => request('c', [...shared, ...text(8, 3)], { sampling: SEEDED, seed: 3n });
    const expected = (await oneByOne(setup().engine, [c()])).tokens[0];

    const { engine, runner } = setup({ slots: 2, cacheBlocks: 3 });
    engine.add(request('a', shared, { maxNewTokens: 4 }));
    await drain(engine); // a's blocks 0 and 1 cached
    engine.add(request('b', [...shared, ...text(8, 2)], { maxNewTokens: 4 }));
    engine.add(c());
    const open = runner.hold();
    // b's and c's first chunks in one step: both load a's blocks.
    const stepping = engine.step();
    expect(engine.prefixCache.stats.pinned).toBe(2);
    engine.abort('b');
    open();
    const first = (await stepping)!;
    expect(first.events).toEqual([]);
    expect(first.prefixHits).toBe(64);
    expect(engine.prefixCache.stats.pinned).toBe(0);
    const rest = await drain(engine);
    expect(rest.hits).toBe(0);
    expect(rest.tokens('c')).toEqual(expected);
    expect(rest.events.has('b')).toBe(false);
  });
});

describe('Engine: mixed steps and the step-time budget', () => {
  /** Requests of every kind: greedy and seeded, text and images, some sharing a prefix. */
  function mix() {
    const shared = text(40, 9);
    const photo = [{ at: 4, rows: 20, seed: 3 }];
    return [
      request('greedy', text(30, 1), { maxNewTokens: 12, logprobs: true }),
      request('seeded', text(53, 2), { sampling: SEEDED, seed: 5n, maxNewTokens: 10 }),
      request('image', text(45, 3), { images: photo, maxNewTokens: 9 }),
      request('long', text(150, 4), { sampling: SEEDED, seed: 8n, maxNewTokens: 6 }),
      request('shared a', [...shared, ...text(7, 5)], { maxNewTokens: 5 }),
      request('shared b', [...shared, ...text(9, 6)], { maxNewTokens: 5, logprobs: true }),
    ];
  }

  it('gives the same tokens and logprobs as running each request alone', async () => {
    const alone = setup({ slots: 1, cacheBlocks: 0 });
    const expected = new Map<string, TokenEvent[]>();
    for (const r of mix()) {
      alone.engine.add(r);
      expected.set(r.id, (await drain(alone.engine)).events.get(r.id)!);
    }
    for (const cacheBlocks of [0, 64]) {
      const { engine, runner } = setup({ slots: 6, cacheBlocks }, { maxPrefillTokens: 64 });
      for (const r of mix()) engine.add(r);
      const done = await drain(engine);
      for (const r of mix()) {
        const strip = (events: TokenEvent[]) => events.map(({ timings: _, ...e }) => e);
        expect(strip(done.events.get(r.id)!), `${r.id}, ${cacheBlocks} blocks`).toEqual(
          strip(expected.get(r.id)!),
        );
      }
      // Prompts of several requests shared steps, and prompt chunks ran beside decode rows.
      expect(runner.steps[0]!.prefill.length).toBeGreaterThan(1);
      expect(runner.steps.some((s) => s.prefill.length > 0 && s.decode.length > 0)).toBe(true);
      if (cacheBlocks > 0) {
        // 'shared b' waited for 'shared a' to compute the 32 tokens they share.
        expect(done.hits).toBe(32);
      }
    }
  });

  const COST: ScriptedCost = { prefillBaseMs: 2, tokenMs: 0.25, decodeBaseMs: 3, rowMs: 0.5 };

  /**
   * Four streams decoding, then a 1,500-token prompt: the longest gap, in simulated ms,
   * between two tokens of one of the four while the prompt is prefilled, and the prompt's
   * time to its first token.
   */
  async function longPromptBesideStreams(maxStepMs: number) {
    const clock = new FakeClock();
    const { engine, runner } = setup(
      { slots: 5, context: 2048, cost: COST, clock },
      { maxPrefillTokens: 512, maxStepMs },
    );
    const streams = ['s0', 's1', 's2', 's3'];
    for (const [i, id] of streams.entries()) {
      engine.add(request(id, text(12, i), { maxNewTokens: 400 }));
    }
    const last = new Map<string, number>();
    let gap = 0;
    let firstToken: number | undefined;
    const step = async () => {
      const report = (await engine.step())!;
      for (const e of report.events) {
        if (e.id === 'long') firstToken ??= clock.ms;
        if (last.has(e.id)) gap = Math.max(gap, clock.ms - last.get(e.id)!);
        last.set(e.id, clock.ms);
      }
      return report;
    };
    while (engine.load.running < 4 || runner.steps.at(-1)!.decode.length < 4) await step();
    for (let i = 0; i < 5; i++) await step(); // decode-only steps: the budget learns them
    gap = 0;
    const admitted = clock.ms;
    engine.add(request('long', text(1500, 9), { maxNewTokens: 4 }));
    while (firstToken === undefined) await step();
    await step(); // the first step with the long prompt's sequence decoding too
    return { gap, ttft: firstToken - admitted, steps: runner.steps };
  }

  it('never holds running streams longer than the step budget for a long prompt', async () => {
    const budgeted = await longPromptBesideStreams(20);
    expect(budgeted.gap).toBeGreaterThan(0);
    expect(budgeted.gap).toBeLessThanOrEqual(20 + 1e-9);
    // The prompt went in many chunks, each beside the four decode rows.
    const chunks = budgeted.steps.filter((s) => s.prefill.some((c) => c.tokens.length > 50));
    expect(chunks.length).toBeGreaterThan(10);
    expect(chunks.every((s) => s.decode.length === 4)).toBe(true);

    // Without the time budget, a 512-token chunk holds them for 2 + 128 + 5 ms.
    const unbounded = await longPromptBesideStreams(0);
    expect(unbounded.gap).toBeGreaterThan(100);
    // The budget costs the long prompt time to its first token, not correctness.
    expect(budgeted.ttft).toBeGreaterThan(unbounded.ttft);
  });

  it('gives the same tokens whatever the time budget cut the prompts into', async () => {
    const run = async (maxStepMs: number) => {
      const clock = new FakeClock();
      const { engine, runner } = setup(
        { slots: 6, cacheBlocks: 64, cost: COST, clock },
        { maxPrefillTokens: 512, maxStepMs },
      );
      const all = mix();
      engine.add(all[0]!);
      await engine.step(); // greedy decoding: the others' prompts go beside its rows
      for (const r of all.slice(1)) engine.add(r);
      const done = await drain(engine);
      const chunks = runner.steps.flatMap((s) => s.prefill.map((c) => c.tokens.length));
      return {
        chunks,
        answers: all.map((r) => done.events.get(r.id)?.map((e) => [e.token, e.logprob])),
      };
    };
    const [cut, whole] = [await run(8), await run(0)];
    expect(cut.chunks.length).toBeGreaterThan(whole.chunks.length);
    expect(cut.answers).toEqual(whole.answers);
  });
});
