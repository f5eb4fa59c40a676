// The text graph's `matmul` attention (matmul-attention.ts): which keys each query sees (past
// per sequence, its own chunk causally, the sliding window), and parity with the reference
// goldens through the greedy loop, which keeps the cache on the host for it as the decoder
// engine does.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../checkpoint/index.js';
import { createSession, GraphBuilder, makeTensor, readOutput } from '../onnx/index.js';
import { eosTokenIds } from '../text-processor/index.js';
import { generateGreedy, loadTextModel, type TextModel } from './generate.js';
import {
  copyTesterCheckpoint,
  goldenCaseNames,
  loadGoldenCase,
  makeTinyCheckpoint,
  maxAbsDiff,
} from './goldens.test-helper.js';
import { attentionMasks, matmulAttention } from './matmul-attention.js';

describe('matmul attention: visible keys', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-matmul-attention-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // 2 query heads over 1 KV head, D = 4. q = 0 makes attention uniform over the visible keys;
  // values v = position then give the mean position of the keys a query sees.
  const D = 4;
  async function meanPositions(
    window: number | null,
    pastLengths: number[],
    past: number,
    seq: number,
  ): Promise<number[][]> {
    const shape = { heads: 2, kvHeads: 1, headDim: D, window, type: 'float32' as const };
    const g = new GraphBuilder({ name: 'attention' });
    const embeds = g.input('embeds', 'float32', ['batch', 'seq', 1]);
    const seqlens = g.input('seqlens_k', 'int32', ['batch']);
    const q = g.input('q', 'float32', ['batch', 'seq', 2 * D]);
    const k = g.input('k', 'float32', ['batch', 'seq', D]);
    const v = g.input('v', 'float32', ['batch', 'seq', D]);
    const pastKey = g.input('past_key', 'float32', ['batch', 1, 'past', D]);
    const pastValue = g.input('past_value', 'float32', ['batch', 1, 'past', D]);
    const masks = attentionMasks(g, { seqlens, embeds, past: pastKey }, shape);
    const out = matmulAttention(g, { q, k, v, pastKey, pastValue, masks }, shape);
    g.output(g.node1({ opType: 'Identity', inputs: [out], output: 'out' }), 'float32', [
      'batch',
      'seq',
      2 * D,
    ]);
    const path = join(dir, `attention-${window}.onnx`);
    g.writeModel(path);
    const session = await createSession(path, { intraOpThreads: 1 });
    try {
      const batch = pastLengths.length;
      // Past slot b: position j holds value j below its length, garbage (1000) above it.
      const pastValues = new Float32Array(batch * past * D);
      for (let b = 0; b < batch; b++) {
        for (let j = 0; j < past; j++) {
          pastValues.fill(
            j < pastLengths[b]! ? j : 1000,
            (b * past + j) * D,
            (b * past + j + 1) * D,
          );
        }
      }
      const fresh = new Float32Array(batch * seq * D);
      for (let b = 0; b < batch; b++) {
        for (let s = 0; s < seq; s++) {
          fresh.fill(pastLengths[b]! + s, (b * seq + s) * D, (b * seq + s + 1) * D);
        }
      }
      const result = await session.run({
        embeds: makeTensor('float32', new Float32Array(batch * seq), [batch, seq, 1]),
        seqlens_k: makeTensor(
          'int32',
          Int32Array.from(pastLengths, (n) => n + seq - 1),
          [batch],
        ),
        q: makeTensor('float32', new Float32Array(batch * seq * 2 * D), [batch, seq, 2 * D]),
        k: makeTensor('float32', new Float32Array(batch * seq * D), [batch, seq, D]),
        v: makeTensor('float32', fresh, [batch, seq, D]),
        past_key: makeTensor('float32', new Float32Array(batch * past * D), [batch, 1, past, D]),
        past_value: makeTensor('float32', pastValues, [batch, 1, past, D]),
      });
      const data = readOutput(result, 'out', 'float32').data;
      return pastLengths.map((_, b) =>
        Array.from({ length: seq }, (_, s) => {
          const row = (b * seq + s) * 2 * D;
          // Both query heads see the same keys.
          expect(data[row + D]).toBeCloseTo(data[row]!, 5);
          return data[row]!;
        }),
      );
    } finally {
      await session.release();
    }
  }

  /** Mean of the positions lo .. hi. */
  const mean = (lo: number, hi: number) => (lo + hi) / 2;

  it('sees each sequence its own past and its chunk causally, never the padding', async () => {
    // Two sequences in one buffer of 8 positions: 5 and 2 valid, 3 new tokens each.
    const got = await meanPositions(null, [5, 2], 8, 3);
    expect(got[0]![0]).toBeCloseTo(mean(0, 5), 5);
    expect(got[0]![2]).toBeCloseTo(mean(0, 7), 5);
    expect(got[1]![0]).toBeCloseTo(mean(0, 2), 5);
    expect(got[1]![2]).toBeCloseTo(mean(0, 4), 5);
  });

  it('a first prompt (no valid past) sees only its own chunk, causally', async () => {
    const got = await meanPositions(null, [0], 4, 5);
    expect(got[0]).toEqual([0, 0.5, 1, 1.5, 2].map((x) => expect.closeTo(x, 5)));
  });

  it('with a sliding window W, a query at position p sees p - W < j <= p (as HF)', async () => {
    const W = 3;
    // Past of 6, chunk of 4 at positions 6..9: sees max(0, p - 2) .. p.
    const got = await meanPositions(W, [6], 8, 4);
    got[0]!.forEach((m, s) => expect(m).toBeCloseTo(mean(6 + s - W + 1, 6 + s), 5));
    // A decode step in a batch: positions 4 and 1.
    const step = await meanPositions(W, [4, 1], 6, 1);
    expect(step[0]![0]).toBeCloseTo(mean(2, 4), 5);
    expect(step[1]![0]).toBeCloseTo(mean(0, 1), 5);
  });
});

// The same parity the group-query graph has (language-model.test.ts), with the graph only
// reading the cache: generateGreedy writes new_* into it, as the decoder engine's runner does.
const TOLERANCE = 1e-3;
const suites = [
  { prefix: 'tester-', make: copyTesterCheckpoint, cases: 2 },
  { prefix: 'tiny-', make: makeTinyCheckpoint, cases: 7 },
];
for (const [{ prefix, make, cases }, attention] of suites.flatMap((suite) =>
  (['matmul', 'adaptive'] as const).map((kind) => [suite, kind] as const),
)) {
  describe(`${attention} attention: reference parity, ${prefix}*`, () => {
    const names = goldenCaseNames(prefix);
    let dir = '';
    let model: TextModel;
    let eos: number[] = [];
    beforeAll(async () => {
      dir = make();
      model = await loadTextModel(openCheckpoint(dir), {
        session: { intraOpThreads: 1 },
        attention,
      });
      eos = eosTokenIds(dir);
    });
    afterAll(async () => {
      await model?.release();
      rmSync(dir, { recursive: true, force: true });
    });

    it(`has its ${cases} golden cases`, () => expect(names.length).toBe(cases));

    it('batches the golden prompts (right padded) and matches the reference for each', async () => {
      const goldens = names.map(loadGoldenCase);
      const { sequences } = await generateGreedy(
        model,
        goldens.map((g) => ({ ids: g.inputIds, imageRows: g.imageRows })),
        { maxNewTokens: 32, eosTokenIds: eos },
      );
      goldens.forEach((golden, i) => {
        const got = sequences[i]!;
        expect(
          maxAbsDiff(got.prefillLogits, golden.prefillLogits),
          golden.name,
        ).toBeLessThanOrEqual(TOLERANCE);
        expect(got.generatedIds, golden.name).toEqual(golden.generatedIds);
      });
    });
  });
}
