// Batched greedy decoding: prompts of different lengths, with and without images, decoded
// together give each exactly what it gives alone (and what the reference gives).
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../checkpoint/index.js';
import { generateGreedy, loadTextModel, type Prompt, type TextModel } from './generate.js';
import { loadGoldenCase, makeTinyCheckpoint, maxAbsDiff } from './goldens.test-helper.js';

const CASES = [
  'tiny-two-images-split-on', // 665 tokens, 640 image rows
  'tiny-text-only', // 21 tokens
  'tiny-one-image-split-off', // 73 tokens
  'tiny-tall-image-split-off', // 83 tokens
];

describe('generateGreedy batching (tiny checkpoint)', () => {
  let dir = '';
  let model: TextModel;
  beforeAll(async () => {
    dir = makeTinyCheckpoint();
    model = await loadTextModel(openCheckpoint(dir), { session: { intraOpThreads: 1 } });
  });
  afterAll(async () => {
    await model?.release();
    rmSync(dir, { recursive: true, force: true });
  });

  const goldens = CASES.map(loadGoldenCase);
  const prompts: Prompt[] = goldens.map((g) => ({ ids: g.inputIds, imageRows: g.imageRows }));

  it('decodes 4 prompts together exactly as each alone and as the reference', async () => {
    const options = { maxNewTokens: 32, eosTokenIds: [2, 460] };
    const together = await generateGreedy(model, prompts, options);
    for (const [b, prompt] of prompts.entries()) {
      const alone = (await generateGreedy(model, [prompt], options)).sequences[0]!;
      const got = together.sequences[b]!;
      expect(got.generatedIds).toEqual(alone.generatedIds);
      expect(got.generatedIds).toEqual(goldens[b]!.generatedIds);
      expect(maxAbsDiff(got.prefillLogits, alone.prefillLogits)).toBeLessThanOrEqual(1e-5);
    }
  });

  it('stops each sequence on its own EOS while the others go on', async () => {
    // 358 is an early token of some of these continuations and not of others.
    const options = { maxNewTokens: 32, eosTokenIds: [2, 358] };
    const together = await generateGreedy(model, prompts, options);
    const lengths = together.sequences.map((s) => s.generatedIds.length);
    expect(new Set(lengths).size).toBeGreaterThan(1);
    for (const [b, prompt] of prompts.entries()) {
      const alone = (await generateGreedy(model, [prompt], options)).sequences[0]!;
      expect(together.sequences[b]!.generatedIds).toEqual(alone.generatedIds);
      const golden = goldens[b]!.generatedIds;
      const stop = golden.findIndex((id) => options.eosTokenIds.includes(id));
      expect(alone.generatedIds).toEqual(stop < 0 ? golden : golden.slice(0, stop + 1));
    }
  });

  it('reports throughput (logged, not asserted)', async () => {
    const options = { maxNewTokens: 32, eosTokenIds: [] };
    const one = await generateGreedy(model, [prompts[0]!], options);
    const batch = await generateGreedy(model, prompts, options);
    const promptTokens = (r: typeof one) => r.sequences.reduce((n, s) => n + s.promptIds.length, 0);
    const rate = (tokens: number, ms: number) => ((tokens * 1000) / ms).toFixed(0);
    for (const [label, r] of [
      ['batch 1', one],
      ['batch 4', batch],
    ] as const) {
      const generated = r.sequences.length * r.decodeSteps;
      console.log(
        `tiny ${label}: prefill ${promptTokens(r)} tokens in ${r.prefillMs.toFixed(1)} ms ` +
          `(${rate(promptTokens(r), r.prefillMs)} tokens/s), decode ${generated} tokens in ` +
          `${r.decodeMs.toFixed(1)} ms (${rate(generated, r.decodeMs)} tokens/s)`,
      );
    }
    expect(batch.decodeSteps).toBe(31);
  });

  it('rejects a prompt whose image token count differs from its image rows', async () => {
    const g = goldens[2]!;
    const rows = g.imageRows!.subarray(0, g.imageRows!.length - 64);
    await expect(
      generateGreedy(model, [{ ids: g.inputIds, imageRows: rows }], {
        maxNewTokens: 1,
        eosTokenIds: [],
      }),
    ).rejects.toThrow('the prompt has 64 image tokens (id 459) but 63 image embedding rows');
  });
});
