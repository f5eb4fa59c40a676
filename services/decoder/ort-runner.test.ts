// OrtModelRunner on the tiny checkpoint: its views follow the step's span (a stride that grows
// and shrinks with the sequences, the buffers repacked in place) and give exactly what views
// of the whole context give — tokens and logprobs, greedy and seeded, through prefix hits and
// mixed steps.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  GROUP_QUERY_MAX_DECODE_ROWS,
  loadTextModel,
  openCheckpoint,
  writeTinyModel,
  type TextModel,
} from '../model/index.js';
import { Engine } from './engine.js';
import type { RunnerStep } from './model-runner.js';
import { OrtModelRunner, runnerAttention } from './ort-runner.js';
import type { EngineRequest, TokenEvent } from './protocol.js';
import { GREEDY } from './sampler.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-ort-runner-'));
let model: TextModel;

beforeAll(async () => {
  const dir = join(work, 'tiny');
  writeTinyModel({ out: dir, size: 'tiny', seed: 0 });
  model = await loadTextModel(openCheckpoint(dir), { session: { intraOpThreads: 1 } });
});

afterAll(async () => {
  await model?.release();
  rmSync(work, { recursive: true, force: true });
});

function request(id: string, length: number, seed: number, maxNewTokens: number): EngineRequest {
  return {
    id,
    promptIds: Array.from({ length }, (_, i) => 3 + ((i * 37 + seed * 101) % 400)),
    imageRows: new Uint8Array(0),
    imageDtype: 'float32',
    images: [],
    sampling: seed % 2 === 0 ? GREEDY : { ...GREEDY, temperature: 0.8, topK: 50 },
    seed: BigInt(seed),
    stopTokenIds: [],
    maxNewTokens,
    logprobs: true,
    topLogprobs: 2,
  };
}

/** Runs the requests (the last two once the others are done) and records every stride. */
async function run(fullContextViews: boolean, on: TextModel = model) {
  const runner = new OrtModelRunner(
    on,
    { slots: 3, context: 600, cacheBlocks: 64 },
    { fullContextViews },
  );
  const strides: number[] = [];
  const decodeRows = new Set<number>();
  const recording = {
    vocab: runner.vocab,
    hidden: runner.hidden,
    imageTokenId: runner.imageTokenId,
    kv: runner.kv,
    run: async (step: RunnerStep) => {
      const out = await runner.run(step);
      strides.push(runner.stride);
      // The decode run's batch: slots 0 .. the highest decoding one.
      if (step.decode.length > 0) decodeRows.add(1 + Math.max(...step.decode.map((r) => r.slot)));
      return out;
    },
    release: () => Promise.resolve(),
  };
  const engine = new Engine(recording, { maxWaiting: 8, maxPrefillTokens: 96, eosTokenIds: [] });
  const events = new Map<string, Array<Omit<TokenEvent, 'timings'>>>();
  const drain = async () => {
    while (engine.hasWork) {
      for (const { timings: _, ...e } of (await engine.step())?.events ?? []) {
        events.set(e.id, [...(events.get(e.id) ?? []), e]);
      }
    }
  };
  // 20 + 70 tokens, 150 + 40, 430 + 20: prompts in chunks of 96, the stride grows with them.
  for (const [i, [length, news]] of [
    [20, 70],
    [150, 40],
    [430, 20],
  ].entries()) {
    engine.add(request(`r${i}`, length!, i, news!));
  }
  await drain();
  // Short ones alone (shrinks), then the long prompt again (a prefix hit, grown again).
  engine.add(request('short', 30, 4, 8));
  await drain();
  engine.add(request('again', 430, 2, 6));
  await drain();
  return { events, strides, decodeRows };
}

describe('OrtModelRunner', () => {
  it('gives what views of the whole context give, while its stride follows the span', async () => {
    const tiered = await run(false);
    const full = await run(true);
    expect([...tiered.events.keys()].sort()).toEqual(['again', 'r0', 'r1', 'r2', 'short']);
    for (const [id, events] of full.events) expect(tiered.events.get(id), id).toEqual(events);
    expect(new Set(full.strides)).toEqual(new Set([600]));
    // A quarter above the span in multiples of 64: grown as the prompts come in, shrunk as
    // the long ones end and for the short request alone, grown again.
    const changes = tiered.strides.filter((s, i) => i === 0 || s !== tiered.strides[i - 1]);
    expect(changes).toEqual([128, 192, 320, 512, 256, 128, 64, 576]);
  });

  it.each(['matmul', 'adaptive'] as const)(
    'gives with %s attention what it gives with GroupQueryAttention',
    async (attention) => {
      const other = await loadTextModel(openCheckpoint(join(work, 'tiny')), {
        session: { intraOpThreads: 1 },
        attention,
      });
      try {
        const [gqa, plain] = [await run(false), await run(false, other)];
        expect(plain.strides).toEqual(gqa.strides);
        expect([...plain.events.keys()].sort()).toEqual([...gqa.events.keys()].sort());
        let compared = 0;
        for (const [id, events] of gqa.events) {
          const got = plain.events.get(id)!;
          // The same tokens; log-probabilities equal to float32 rounding (another sum order).
          expect(
            got.map((e) => e.token),
            id,
          ).toEqual(events.map((e) => e.token));
          events.forEach((e, i) => {
            expect(got[i]!.logprob, id).toBeCloseTo(e.logprob!, 4);
            compared++;
          });
        }
        expect(compared).toBe(70 + 40 + 20 + 8 + 6);
        // Decode batches of 1 to 3 rows: the adaptive graph's GroupQueryAttention branch here
        // (its matmul branch: matmul-attention.test.ts, through the greedy loop).
        if (attention === 'adaptive') {
          expect(Math.max(...plain.decodeRows)).toBeLessThanOrEqual(GROUP_QUERY_MAX_DECODE_ROWS);
        }
      } finally {
        await other.release();
      }
    },
  );

  it("takes a greedy step's tokens from the graph's argmax: those of the logits", async () => {
    // Greedy requests without logprobs, and one with (its steps fetch logits).
    const generate = async (greedyInGraph: boolean) => {
      const runner = new OrtModelRunner(
        model,
        { slots: 3, context: 600, cacheBlocks: 0 },
        { greedyInGraph },
      );
      const kinds = { tokens: 0, logits: 0, greedySteps: 0 };
      const engine = new Engine(
        {
          vocab: runner.vocab,
          hidden: runner.hidden,
          imageTokenId: runner.imageTokenId,
          kv: runner.kv,
          run: async (step: RunnerStep) => {
            const out = await runner.run(step);
            if (step.greedy) kinds.greedySteps++;
            if (out.tokens) {
              expect(out.logits).toEqual([]);
              kinds.tokens += out.tokens.length;
            } else kinds.logits += out.logits.length;
            return out;
          },
          release: () => Promise.resolve(),
        },
        { maxWaiting: 8, maxPrefillTokens: 96, eosTokenIds: [] },
      );
      const greedy = (id: string, length: number, seed: number, news: number) => ({
        ...request(id, length, seed * 2, news),
        logprobs: false,
        topLogprobs: 0,
      });
      engine.add(greedy('a', 40, 0, 30));
      engine.add(greedy('b', 150, 1, 24));
      const tokens = new Map<string, number[]>();
      const drain = async () => {
        while (engine.hasWork) {
          for (const e of (await engine.step())?.events ?? []) {
            tokens.set(e.id, [...(tokens.get(e.id) ?? []), e.token]);
          }
        }
      };
      await drain();
      engine.add(greedy('c', 20, 2, 12));
      engine.add(request('with-logprobs', 30, 4, 12));
      await drain();
      return { tokens, kinds };
    };
    const inGraph = await generate(true);
    const onHost = await generate(false);
    expect([...inGraph.tokens.keys()].sort()).toEqual(['a', 'b', 'c', 'with-logprobs']);
    for (const [id, got] of onHost.tokens) expect(inGraph.tokens.get(id), id).toEqual(got);
    // Every step of a and b alone was greedy; c beside with-logprobs fetched logits.
    expect(inGraph.kinds.greedySteps).toBe(onHost.kinds.greedySteps);
    expect(inGraph.kinds.tokens).toBeGreaterThanOrEqual(30 + 24);
    expect(inGraph.kinds.logits).toBeGreaterThanOrEqual(12 * 2);
    expect(onHost.kinds.tokens).toBe(0);
  });

  it('runs the adaptive attention on CPU, GroupQueryAttention on CUDA', () => {
    expect(runnerAttention('cpu')).toBe('adaptive');
    expect(runnerAttention('cuda')).toBe('group-query');
  });
});
