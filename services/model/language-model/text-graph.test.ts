// How the text graph's GroupQueryAttention treats the sliding window and padding, checked on
// the CPU provider (the facts text-graph.ts documents).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../checkpoint/index.js';
import { attr, createSession, GraphBuilder, makeTensor, readOutput } from '../onnx/index.js';
import { TokenEmbeddings } from './embeddings.js';
import { loadTextModel, type TextModel } from './generate.js';
import { loadGoldenCase, makeTinyCheckpoint, maxAbsDiff } from './goldens.test-helper.js';
import { cacheNames } from './text-graph.js';

describe('GroupQueryAttention local_window_size', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-window-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // q = 0 makes attention uniform over the keys it may see; v_j = j then gives the mean
  // index of the visible keys.
  it('sees local_window_size keys, the same as an HF sliding window of that size', async () => {
    const HEAD = 16;
    const T = 10;
    const WINDOW = 3;
    const g = new GraphBuilder({ name: 'window' });
    const q = g.input('q', 'float32', [1, 'seq', HEAD]);
    const k = g.input('k', 'float32', [1, 'seq', HEAD]);
    const v = g.input('v', 'float32', [1, 'seq', HEAD]);
    const pastKey = g.input('past_key', 'float32', [1, 1, 'past', HEAD]);
    const pastValue = g.input('past_value', 'float32', [1, 1, 'past', HEAD]);
    const seqlens = g.input('seqlens_k', 'int32', [1]);
    const total = g.input('total', 'int32', []);
    g.node({
      opType: 'GroupQueryAttention',
      domain: 'com.microsoft',
      inputs: [q, k, v, pastKey, pastValue, seqlens, total],
      outputs: ['out', 'present_key', 'present_value'],
      attributes: {
        num_heads: attr.int(1),
        kv_num_heads: attr.int(1),
        local_window_size: attr.int(WINDOW),
      },
    });
    g.output('out', 'float32', [1, 'seq', HEAD]);
    g.output('present_key', 'float32', [1, 1, 'total', HEAD]);
    g.output('present_value', 'float32', [1, 1, 'total', HEAD]);
    const path = join(dir, 'window.onnx');
    g.writeModel(path);
    const session = await createSession(path, { intraOpThreads: 1 });
    try {
      const values = Float32Array.from({ length: T * HEAD }, (_, i) => Math.floor(i / HEAD));
      const empty = () => makeTensor('float32', new Float32Array(0), [1, 1, 0, HEAD]);
      const out = await session.run({
        past_key: empty(),
        past_value: empty(),
        q: makeTensor('float32', new Float32Array(T * HEAD), [1, T, HEAD]),
        k: makeTensor('float32', new Float32Array(T * HEAD), [1, T, HEAD]),
        v: makeTensor('float32', values, [1, T, HEAD]),
        seqlens_k: makeTensor('int32', Int32Array.from([T - 1]), [1]),
        total: makeTensor('int32', Int32Array.from([T]), []),
      });
      const data = readOutput(out, 'out', 'float32').data;
      const means = Array.from({ length: T }, (_, i) => data[i * HEAD]!);
      // query i sees keys j with i - WINDOW < j <= i (HF: kv_idx > q_idx - sliding_window)
      const expected = means.map((_, i) => (Math.max(0, i - WINDOW + 1) + i) / 2);
      for (let i = 0; i < T; i++) expect(means[i]).toBeCloseTo(expected[i]!, 5);

      // The same in a decode step: query T with a past of T keys sees T - WINDOW + 1 .. T.
      const step = await session.run({
        q: makeTensor('float32', new Float32Array(HEAD), [1, 1, HEAD]),
        k: makeTensor('float32', new Float32Array(HEAD), [1, 1, HEAD]),
        v: makeTensor('float32', new Float32Array(HEAD).fill(T), [1, 1, HEAD]),
        past_key: out['present_key']!,
        past_value: out['present_value']!,
        seqlens_k: makeTensor('int32', Int32Array.from([T]), [1]),
        total: makeTensor('int32', Int32Array.from([T + 1]), []),
      });
      const decoded = readOutput(step, 'out', 'float32').data[0]!;
      expect(decoded).toBeCloseTo((T - WINDOW + 1 + T) / 2, 5);
    } finally {
      await session.release();
    }
  });
});

describe('text graph padding in a batch (tiny checkpoint)', () => {
  let dir = '';
  let model: TextModel;
  let embeddings: TokenEmbeddings;
  beforeAll(async () => {
    dir = makeTinyCheckpoint();
    model = await loadTextModel(openCheckpoint(dir), { session: { intraOpThreads: 1 } });
    embeddings = model.embeddings;
  });
  afterAll(async () => {
    await model?.release();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Logits at `lastIndex[b]` of one prefill over `rows` [batch, width, hidden]. */
  async function prefill(
    rows: Float32Array,
    batch: number,
    width: number,
    seqlensK: number[],
    lastIndex: number[],
  ): Promise<Float32Array[]> {
    const { hidden, vocab, kvHeads, headDim, layers } = model.graph;
    const feeds: Record<string, ReturnType<typeof makeTensor>> = {
      inputs_embeds: makeTensor('float32', rows, [batch, width, hidden]),
      seqlens_k: makeTensor('int32', Int32Array.from(seqlensK), [batch]),
      total_sequence_length: makeTensor('int32', Int32Array.from([width]), []),
      logit_positions: makeTensor('int64', BigInt64Array.from(lastIndex, BigInt), [batch, 1]),
      position_ids: makeTensor(
        'int64',
        BigInt64Array.from({ length: batch * width }, (_, i) => BigInt(i % width)),
        [batch, width],
      ),
    };
    for (let l = 0; l < layers; l++) {
      const empty = makeTensor('float32', new Float32Array(0), [batch, kvHeads, 0, headDim]);
      feeds[cacheNames(l).pastKey] = empty;
      feeds[cacheNames(l).pastValue] = empty;
    }
    const logits = readOutput(await model.session.run(feeds), 'logits', 'float32').data;
    return lastIndex.map((_, b) => logits.slice(b * vocab, (b + 1) * vocab));
  }

  it('right padding with per-sequence seqlens_k gives each sequence its own logits; left padding does not', async () => {
    const { hidden } = model.graph;
    const short = loadGoldenCase('tiny-text-only').inputIds; // 21 tokens
    const long = loadGoldenCase('tiny-one-image-split-off');
    const longRows = embeddings.embed(long.inputIds.map((id) => (id === 459 ? 0 : id)));
    const width = long.inputIds.length;
    const shortRows = embeddings.embed(short);
    const [alone] = await prefill(
      shortRows,
      1,
      short.length,
      [short.length - 1],
      [short.length - 1],
    );

    const right = new Float32Array(2 * width * hidden);
    right.set(shortRows, 0);
    right.set(longRows, width * hidden);
    const [rightShort] = await prefill(
      right,
      2,
      width,
      [short.length - 1, width - 1],
      [short.length - 1, width - 1],
    );
    expect(maxAbsDiff(rightShort!, alone!)).toBeLessThanOrEqual(1e-5);

    // Left padding: GQA has no attention mask; the pads count as tokens at positions 0.. .
    const left = new Float32Array(2 * width * hidden);
    left.set(shortRows, (width - short.length) * hidden);
    left.set(longRows, width * hidden);
    const [leftShort] = await prefill(
      left,
      2,
      width,
      [width - 1, width - 1],
      [width - 1, width - 1],
    );
    expect(maxAbsDiff(leftShort!, alone!)).toBeGreaterThan(1e-3);
  });
});
