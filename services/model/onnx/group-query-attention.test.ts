// com.microsoft GroupQueryAttention on the CPU provider of onnxruntime-node 1.30: a prompt
// step then a decode step with the KV cache, rotary embeddings inside the op, checked
// against plain causal attention in JavaScript.
//
// What worked (the text graph needs exactly this):
//   inputs, in order (optional ones may be '' when unused):
//     0 query                 float32 [batch, seq, num_heads * head]
//     1 key                   float32 [batch, seq, kv_num_heads * head]
//     2 value                 float32 [batch, seq, kv_num_heads * head]
//     3 past_key              float32 [batch, kv_num_heads, past, head]  ('' or past=0 on the
//     4 past_value            float32 [batch, kv_num_heads, past, head]   first step: same result)
//     5 seqlens_k             int32 [batch]  = tokens in the sequence after this step - 1
//     6 total_sequence_length int32 []       = past + seq (the longest in the batch)
//     7 cos_cache             float32 [max_positions, head / 2]  (only with do_rotary=1)
//     8 sin_cache             float32 [max_positions, head / 2]
//   attributes: num_heads (int), kv_num_heads (int), do_rotary (int 1), rotary_interleaved
//     (int 0 = Llama/Mistral "rotate_half"), scale omitted = 1 / sqrt(head).
//   outputs: output [batch, seq, num_heads * head], present_key / present_value
//     [batch, kv_num_heads, past + seq, head] (keys stored after rotary).
//   Positions come from seqlens_k (past length + 0..seq-1), no position_ids needed.
// Limits found on CPU: the head size must be a multiple of 8 ("head_size must be a multiple
// of 8. Got head_size % 8 == 4"), and of 16 with do_rotary=1 ("head_size shall be a
// multiple of 16"), so tiny test checkpoints need head_dim 16, 32, ... (Idefics2's is 128).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Tensor } from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { int } from './attribute.js';
import { GraphBuilder } from './graph-builder.js';
import { createSession, makeTensor, readOutput } from './session.js';

const HEADS = 2;
const KV_HEADS = 1;
const HEAD = 16;
const MAX_POS = 16;
const THETA = 10000;
const TOKENS = 4; // 3 prompt tokens, then 1 decode step

const dir = mkdtempSync(join(tmpdir(), 'loupe-gqa-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function values(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 7.3 + i * 1.7));
}

/** angle(pos, i) = pos * THETA^(-2i / HEAD), i < HEAD / 2 */
const angle = (pos: number, i: number) => pos * THETA ** ((-2 * i) / HEAD);

/** rotate_half rotary embedding of one head vector at `pos` (in place). */
function rope(v: Float32Array, pos: number): void {
  const half = HEAD / 2;
  for (let i = 0; i < half; i++) {
    const c = Math.cos(angle(pos, i));
    const s = Math.sin(angle(pos, i));
    const a = v[i]!;
    const b = v[i + half]!;
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

/** Causal GQA over all TOKENS: q [T, HEADS*HEAD], k/v [T, KV_HEADS*HEAD] -> [T, HEADS*HEAD]. */
function reference(q: Float32Array, k: Float32Array, v: Float32Array): Float32Array {
  const out = new Float32Array(TOKENS * HEADS * HEAD);
  const head = (x: Float32Array, t: number, h: number, width: number) =>
    x.slice(t * width + h * HEAD, t * width + (h + 1) * HEAD);
  const keys = Array.from({ length: TOKENS }, (_, t) =>
    Array.from({ length: KV_HEADS }, (_, h) => {
      const r = head(k, t, h, KV_HEADS * HEAD);
      rope(r, t);
      return r;
    }),
  );
  for (let t = 0; t < TOKENS; t++) {
    for (let h = 0; h < HEADS; h++) {
      const qh = head(q, t, h, HEADS * HEAD);
      rope(qh, t);
      const kvh = Math.floor(h / (HEADS / KV_HEADS));
      const scores = keys
        .slice(0, t + 1)
        .map((kt) => qh.reduce((s, x, d) => s + x * kt[kvh]![d]!, 0) / Math.sqrt(HEAD));
      const max = Math.max(...scores);
      const weights = scores.map((s) => Math.exp(s - max));
      const sum = weights.reduce((a, b) => a + b, 0);
      for (let d = 0; d < HEAD; d++) {
        let acc = 0;
        for (let j = 0; j <= t; j++)
          acc += (weights[j]! / sum) * head(v, j, kvh, KV_HEADS * HEAD)[d]!;
        out[t * HEADS * HEAD + h * HEAD + d] = acc;
      }
    }
  }
  return out;
}

function gqaModel(): string {
  const g = new GraphBuilder({ name: 'gqa' });
  const q = g.input('query', 'float32', ['batch', 'seq', HEADS * HEAD]);
  const k = g.input('key', 'float32', ['batch', 'seq', KV_HEADS * HEAD]);
  const v = g.input('value', 'float32', ['batch', 'seq', KV_HEADS * HEAD]);
  const pk = g.input('past_key', 'float32', ['batch', KV_HEADS, 'past', HEAD]);
  const pv = g.input('past_value', 'float32', ['batch', KV_HEADS, 'past', HEAD]);
  const seqlens = g.input('seqlens_k', 'int32', ['batch']);
  const total = g.input('total_sequence_length', 'int32', []);
  const half = HEAD / 2;
  const cos = new Float32Array(MAX_POS * half);
  const sin = new Float32Array(MAX_POS * half);
  for (let p = 0; p < MAX_POS; p++) {
    for (let i = 0; i < half; i++) {
      cos[p * half + i] = Math.cos(angle(p, i));
      sin[p * half + i] = Math.sin(angle(p, i));
    }
  }
  const cosCache = g.initializer('cos_cache', 'float32', [MAX_POS, half], cos);
  const sinCache = g.initializer('sin_cache', 'float32', [MAX_POS, half], sin);
  g.node({
    opType: 'GroupQueryAttention',
    domain: 'com.microsoft',
    inputs: [q, k, v, pk, pv, seqlens, total, cosCache, sinCache],
    outputs: ['output', 'present_key', 'present_value'],
    attributes: {
      num_heads: int(HEADS),
      kv_num_heads: int(KV_HEADS),
      do_rotary: int(1),
      rotary_interleaved: int(0),
    },
  });
  g.output('output', 'float32', ['batch', 'seq', HEADS * HEAD]);
  g.output('present_key', 'float32', ['batch', KV_HEADS, 'total', HEAD]);
  g.output('present_value', 'float32', ['batch', KV_HEADS, 'total', HEAD]);
  const path = join(dir, 'gqa.onnx');
  g.writeModel(path);
  return path;
}

describe('GroupQueryAttention (com.microsoft) on CPU', () => {
  it('matches causal attention with rotary embeddings over a prompt and a decode step', async () => {
    const qAll = values(TOKENS * HEADS * HEAD, 1);
    const kAll = values(TOKENS * KV_HEADS * HEAD, 2);
    const vAll = values(TOKENS * KV_HEADS * HEAD, 3);
    const expected = reference(qAll, kAll, vAll);
    const rows = (x: Float32Array, from: number, to: number) =>
      x.slice((from * x.length) / TOKENS, (to * x.length) / TOKENS);
    const step = (from: number, to: number, pastKey: Tensor, pastValue: Tensor) => ({
      query: makeTensor('float32', rows(qAll, from, to), [1, to - from, HEADS * HEAD]),
      key: makeTensor('float32', rows(kAll, from, to), [1, to - from, KV_HEADS * HEAD]),
      value: makeTensor('float32', rows(vAll, from, to), [1, to - from, KV_HEADS * HEAD]),
      past_key: pastKey,
      past_value: pastValue,
      seqlens_k: makeTensor('int32', Int32Array.from([to - 1]), [1]),
      total_sequence_length: makeTensor('int32', Int32Array.from([to]), []),
    });

    const session = await createSession(gqaModel(), { intraOpThreads: 1 });
    try {
      const empty = () => makeTensor('float32', new Float32Array(0), [1, KV_HEADS, 0, HEAD]);
      const prompt = await session.run(step(0, 3, empty(), empty()));
      const promptOut = readOutput(prompt, 'output', 'float32');
      expect(promptOut.dims).toEqual([1, 3, HEADS * HEAD]);
      expect(readOutput(prompt, 'present_key', 'float32').dims).toEqual([1, KV_HEADS, 3, HEAD]);
      const decode = await session.run(
        step(3, 4, prompt['present_key'] as Tensor, prompt['present_value'] as Tensor),
      );
      expect(readOutput(decode, 'present_value', 'float32').dims).toEqual([1, KV_HEADS, 4, HEAD]);
      const got = new Float32Array(TOKENS * HEADS * HEAD);
      got.set(promptOut.data);
      got.set(readOutput(decode, 'output', 'float32').data, 3 * HEADS * HEAD);
      let maxDiff = 0;
      for (let i = 0; i < got.length; i++)
        maxDiff = Math.max(maxDiff, Math.abs(got[i]! - expected[i]!));
      expect(maxDiff).toBeLessThanOrEqual(1e-5);
    } finally {
      await session.release();
    }
  });
});
