// The text graph's attention built from plain MatMul and Softmax nodes instead of ONNX
// Runtime's GroupQueryAttention (text-graph.ts, `attention: 'matmul'`): the form the decoder
// engine's CPU runner uses (docs/decoder-engine.md, "A step's host work").
//
// Why: ONNX Runtime's CPU GroupQueryAttention, given a past it does not share with its present,
// zero-fills a present of [batch, kv heads, past length, head dim] and copies each sequence's
// past into it before it attends, once per query head; at 16 decode streams that was 45% of
// the graph's time and none of it arithmetic. Here the scores are computed against the past
// buffer as it lies and against this step's new keys separately, and the two are joined only
// as scores ([.., past + seq], tiny in a decode step), so no key or value is copied:
//
//   q      [B, S, H·D] -> [B, kvH, G·S, D]   (G = H / kvH query heads per KV head, rows g·S + s)
//   past   [B, kvH, P, D]                     the cache as the host lays it out
//   new    [B, S, kvH·D] -> [B, kvH, S, D]
//   scores = [q·pastᵀ + pastMask, q·newᵀ + newMask] / √D -> softmax over P + S
//   out    = probs[.., :P]·pastV + probs[.., P:]·newV -> [B, S, H·D]
//
// The masks are built once per step from seqlens_k, as GroupQueryAttention reads it: sequence
// b has past_b = seqlens_k[b] + 1 - S valid past positions (clamped to 0 .. P) and its new
// token s sits at position past_b + s. Past key j is visible to it when j < past_b, new key s'
// when s' <= s; with a sliding window W also only when the key's position is above
// position - W (the same keys as HF's sliding window and GQA's local_window_size). Every query
// sees at least its own key, so no softmax row is empty.
//
// Grouping the G query heads that share a KV head into one matrix of G·S rows keeps each
// (sequence, KV head) pair one GEMM, with the past as its right side read in place
// (FusedMatMul's transB), rather than G matrix-vector products.
import { attr, type GraphBuilder, type GraphFloatType, onnxDataType } from '../onnx/index.js';

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Sliding window in tokens, or null for none. */
  window: number | null;
  /** The type of q, k, v and the cache; scores and softmax are float32 either way. */
  type: GraphFloatType;
}

export interface AttentionMasks {
  /**
   * Additive float32 [B, 1, G·S, P] (or [B, 1, 1, P] without a window: the same for every
   * query): 0 where the past key is visible, -inf where not.
   */
  past: string;
  /** Additive float32 [G·S, S] over this step's own keys. */
  fresh: string;
  /** P, the past's length, int64 [1] (every layer's past has it). */
  pastLength: string;
}

const i64 = (g: GraphBuilder, name: string, values: readonly number[]) =>
  g.initializer(g.uniqueName(name), 'int64', [values.length], BigInt64Array.from(values, BigInt));

/**
 * The masks every layer shares, from `seqlens` (int32 [B]), the step's embeddings
 * [B, S, hidden] (for S) and one layer's past [B, kvH, P, D] (for P).
 */
export function attentionMasks(
  g: GraphBuilder,
  { seqlens, embeds, past }: { seqlens: string; embeds: string; past: string },
  { heads, kvHeads, window }: AttentionShape,
): AttentionMasks {
  const groups = heads / kvHeads;
  const scalar = (x: string) => g.node1({ opType: 'Squeeze', inputs: [x] });
  const seqDim = g.node1({
    opType: 'Shape',
    inputs: [embeds],
    attributes: { start: attr.int(1), end: attr.int(2) },
  });
  const pastDim = g.node1({
    opType: 'Shape',
    inputs: [past],
    attributes: { start: attr.int(2), end: attr.int(3) },
  });
  const zero = i64(g, 'zero', [0]);
  const one = i64(g, 'one', [1]);
  const range = (end: string) =>
    g.node1({ opType: 'Range', inputs: [scalar(zero), scalar(end), scalar(one)] });
  const unsqueeze = (x: string, axes: readonly number[]) =>
    g.node1({ opType: 'Unsqueeze', inputs: [x, i64(g, 'axes', axes)] });

  // past_b = clamp(seqlens_k[b] + 1 - S, 0, P), as [B, 1, 1].
  const lengths = g.node1({
    opType: 'Cast',
    inputs: [seqlens],
    attributes: { to: attr.int(onnxDataType('int64')) },
  });
  const pastLengths = unsqueeze(
    g.node1({
      opType: 'Max',
      inputs: [
        g.node1({
          opType: 'Min',
          inputs: [
            g.node1({
              opType: 'Sub',
              inputs: [g.node1({ opType: 'Add', inputs: [lengths, one] }), seqDim],
            }),
            pastDim,
          ],
        }),
        zero,
      ],
    }),
    [1, 2],
  );
  const pastKeys = unsqueeze(range(pastDim), [0, 1]); // [1, 1, P]
  const steps = range(seqDim); // [S]
  const queries = unsqueeze(steps, [0, 2]); // [1, S, 1]
  let visiblePast = g.node1({ opType: 'Less', inputs: [pastKeys, pastLengths] }); // [B, 1, P]
  const freshKeys = unsqueeze(steps, [0]); // [1, S]
  const freshQueries = unsqueeze(steps, [1]); // [S, 1]
  let visibleFresh = g.node1({ opType: 'LessOrEqual', inputs: [freshKeys, freshQueries] });
  if (window !== null) {
    // Key position > query position - W; the query's position is past_b + s, a past key's j.
    const w = i64(g, 'window', [window]);
    const lowest = g.node1({
      opType: 'Sub',
      inputs: [g.node1({ opType: 'Add', inputs: [pastLengths, queries] }), w],
    });
    visiblePast = g.node1({
      // [B, S, P]
      opType: 'And',
      inputs: [visiblePast, g.node1({ opType: 'Greater', inputs: [pastKeys, lowest] })],
    });
    visibleFresh = g.node1({
      opType: 'And',
      inputs: [
        visibleFresh,
        g.node1({
          opType: 'Greater',
          inputs: [freshKeys, g.node1({ opType: 'Sub', inputs: [freshQueries, w] })],
        }),
      ],
    });
  }
  const additive = (visible: string) =>
    g.node1({
      opType: 'Where',
      inputs: [
        visible,
        g.initializer(g.uniqueName('visible'), 'float32', [], Float32Array.of(0)),
        g.initializer(g.uniqueName('hidden'), 'float32', [], Float32Array.of(-Infinity)),
      ],
    });
  // Rows g·S + s: the [.., S, ..] masks repeated G times along the query axis.
  const tile = (x: string, repeats: readonly number[]) =>
    g.node1({ opType: 'Tile', inputs: [x, i64(g, 'repeats', repeats)] });
  return {
    // Without a window the past mask is the same for every query: [B, 1, P] broadcasts.
    past: unsqueeze(
      window === null ? additive(visiblePast) : tile(additive(visiblePast), [1, groups, 1]),
      [1],
    ), // [B, 1, G·S or 1, P]
    fresh: tile(additive(visibleFresh), [groups, 1]), // [G·S, S]
    pastLength: pastDim,
  };
}

/**
 * One layer's attention: q [B, S, H·D] and this step's k, v [B, S, kvH·D] (rotated), the
 * past [B, kvH, P, D] -> [B, S, H·D].
 */
export function matmulAttention(
  g: GraphBuilder,
  {
    q,
    k,
    v,
    pastKey,
    pastValue,
    masks,
  }: { q: string; k: string; v: string; pastKey: string; pastValue: string; masks: AttentionMasks },
  shape: AttentionShape,
): string {
  const { heads, kvHeads, headDim, type } = shape;
  const groups = heads / kvHeads;
  const reshape = (x: string, shape: readonly number[]) =>
    g.node1({ opType: 'Reshape', inputs: [x, i64(g, 'shape', shape)] });
  const transpose = (x: string, perm: readonly number[]) =>
    g.node1({ opType: 'Transpose', inputs: [x], attributes: { perm: attr.ints(perm) } });
  const toFloat = (x: string, to: GraphFloatType) =>
    type === 'float32'
      ? x
      : g.node1({ opType: 'Cast', inputs: [x], attributes: { to: attr.int(onnxDataType(to)) } });

  // [B, S, H·D] -> [B, S, kvH, G, D] -> [B, kvH, G, S, D] -> [B, kvH, G·S, D]
  const rows = reshape(transpose(reshape(q, [0, 0, kvHeads, groups, headDim]), [0, 2, 3, 1, 4]), [
    0,
    0,
    -1,
    headDim,
  ]);
  // [B, S, kvH·D] -> [B, kvH, S, D]
  const perHead = (x: string) => transpose(reshape(x, [0, 0, kvHeads, headDim]), [0, 2, 1, 3]);
  const freshKey = perHead(k);
  const freshValue = perHead(v);
  const scale = 1 / Math.sqrt(headDim);
  const scores = (keys: string, mask: string) =>
    g.node1({
      opType: 'Add',
      inputs: [
        toFloat(
          g.node1({
            opType: 'FusedMatMul',
            domain: 'com.microsoft',
            inputs: [rows, keys],
            attributes: { transB: attr.int(1), alpha: attr.float(scale) },
          }),
          'float32',
        ),
        mask,
      ],
    });
  const probs = g.node1({
    opType: 'Softmax',
    inputs: [
      g.node1({
        opType: 'Concat',
        inputs: [scores(pastKey, masks.past), scores(freshKey, masks.fresh)],
        attributes: { axis: attr.int(-1) },
      }),
    ],
    attributes: { axis: attr.int(-1) },
  });
  const pastDim = masks.pastLength;
  const last = i64(g, 'scores_axis', [-1]);
  const slice = (starts: string, ends: string) =>
    toFloat(g.node1({ opType: 'Slice', inputs: [probs, starts, ends, last] }), type);
  const weighted = g.node1({
    opType: 'Add',
    inputs: [
      g.node1({
        opType: 'MatMul',
        inputs: [slice(i64(g, 'start', [0]), pastDim), pastValue],
      }),
      g.node1({
        opType: 'MatMul',
        inputs: [slice(pastDim, i64(g, 'end', [Number.MAX_SAFE_INTEGER])), freshValue],
      }),
    ],
  }); // [B, kvH, G·S, D]
  // -> [B, kvH, G, S, D] -> [B, S, kvH, G, D] -> [B, S, H·D]
  return reshape(
    transpose(reshape(weighted, [0, 0, groups, -1, headDim]), [0, 3, 1, 2, 4]),
    [0, 0, -1],
  );
}
