// The Idefics2 text decoder (Mistral, docs/model.md §6) as one ONNX graph over the checkpoint's
// weights in place: token embeddings in (looked up on the host, so image rows can be spliced
// in first), logits and the updated KV cache out.
//
//   inputs_embeds          float32 [batch, seq, hidden]
//   seqlens_k              int32   [batch]  per sequence: tokens in the cache after this step - 1
//   total_sequence_length  int32   []       past + seq (the buffer length after this step)
//   logit_positions        int64   [batch, keep]  positions in this step whose logits to return
//   position_ids           int64   [batch, seq]   rotary position of each token (its cache index)
//   past_key_L/past_value_L float32 [batch, kv_heads, past, head_dim]  (L = 0 .. layers-1)
//   ->
//   logits                 float32 [batch, keep, vocab]
//   greedy_tokens          int64   [batch, keep]  the most likely token of each logits row
//                                  (the first, on a tie): a host that samples greedily fetches
//                                  these instead of the logits
//   present_key_L/present_value_L float32 [batch, kv_heads, max(total, past), head_dim]
//   new_key_L/new_value_L  float32 [batch, seq, kv_heads·head_dim]  this step's keys (rotated)
//                                  and values, for a host that keeps the cache itself
//
// logit_positions picks the rows the LM head runs on (the last prompt position of each
// sequence in a prefill, 0 in a decode step): for idefics2-8b's 32k vocabulary, logits of a
// 2,000-token prompt would be 256 MB and a fifth of the prefill's FLOPs.
//
// Two ways to keep the cache between steps:
//   - one buffer per layer that is both past and present (the host passes the same tensor as
//     input and as preallocated output; see generate.ts): with past = [batch, kv_heads, max
//     length, head_dim] and total_sequence_length <= max length, GQA notices the shared
//     buffer and writes only the new keys and values in place. But onnxruntime-node 1.30
//     copies every fetched output back into a new JavaScript buffer, the whole cache each
//     step, so this only suits short caches;
//   - past only, and the host writes new_key_L/new_value_L into its buffer itself (the
//     decoder engine): nothing of the cache's size crosses into JavaScript. GQA still copies
//     each sequence's past into its internal present, once per query head; the `matmul`
//     attention (TextGraphOptions.attention, matmul-attention.ts) reads the past where it
//     lies and has no present_* outputs at all — the decoder engine's choice on CPU.
// Rotary embeddings are applied by RotaryEmbedding nodes before GQA (do_rotary 0), the same
// kernel GQA would run, so the new keys leave the graph already rotated.
//
// Every sequence has its own length, given by seqlens_k; the cache is RIGHT padded: sequence
// b's keys sit at positions 0 .. seqlens_k[b] of the buffer and what follows is garbage that
// attention never reads. GroupQueryAttention (com.microsoft) derives each token's rotary
// position from seqlens_k too (the token at cache index p has position p), so no
// position_ids input is needed. What a step may be (checked by text-graph.test.ts):
//   - a first prompt (past length 0): right-padded batch, seqlens_k[b] = length_b - 1,
//     total_sequence_length = the longest length; rows past a sequence's length are garbage;
//   - a decode step (seq = 1): seqlens_k[b] = cache length of b before the step, the new key
//     is written at that index; total_sequence_length = past buffer length + 1.
// A later chunk of several tokens (past > 0, seq > 1) is only right when every sequence in
// the batch adds all `seq` tokens (ORT computes past_b = seqlens_k[b] + 1 - seq).
// Left padding does not work: GQA would give the pad tokens positions 0.. and attend to them.
//
// Float type: the graph computes in the checkpoint's dtype (`checkpoint.dtype`, F32 or F16;
// see TextGraph.type). A float16 checkpoint (`loupe convert --dtype float16`, the one to use
// with the `cuda` execution provider) gives float16 weights, activations, rotary tables and
// KV cache (past/present are float16: TextGraph.cacheType), while inputs_embeds stays float32
// (cast inside; the host embeddings widen the float16 table exactly) and logits stay float32
// (cast at the end). The RMS norms keep their statistics in float32 (stash_type) and GQA
// its softmax (docs/model.md §10 G1/G4).
import type { Checkpoint } from '../checkpoint/index.js';
import { float32sToFloat16 } from '../convert/index.js';
import {
  type AttentionMasks,
  type AttentionShape,
  attentionMasks,
  matmulAttention,
} from './matmul-attention.js';
import {
  GraphBuilder,
  type GraphFloatType,
  attr,
  CheckpointWeights,
  graphFloatType,
  onnxDataType,
  type OnnxModel,
} from '../onnx/index.js';
import {
  matMulNBits,
  packedInitializer,
  packTextWeights,
  type PackedWeights,
  resolveWeightCacheDir,
} from '../quant/index.js';

export interface TextGraph {
  /** The model in memory, its weights read in place from the checkpoint's files. */
  model: OnnxModel;
  layers: number;
  kvHeads: number;
  headDim: number;
  hidden: number;
  vocab: number;
  /** The float type the graph computes in: the checkpoint's. */
  type: GraphFloatType;
  /** Element type of past_key_L/past_value_L and present_*: `type`. */
  cacheType: GraphFloatType;
  /** How attention is computed (TextGraphOptions.attention); only `group-query` has present_*. */
  attention: TextAttention;
  /** Bytes of weights the graph holds (quantized ones as stored, with scales and zeros). */
  weightBytes: number;
  /** What the weights are, for logs and Info: `float32`, `gptq-4bit-g128-sym`, ... */
  weightFormat: string;
  /** For a quantized checkpoint: the packed weights file and whether it was reused. */
  packed?: { path: string; reused: boolean };
}

export interface TextGraphOptions {
  /**
   * The float type of a quantized checkpoint's graph (activations, KV cache, scales): float32
   * (default; the CPU provider) or float16 (CUDA). A float checkpoint computes in its dtype.
   */
  quantizedFloatType?: GraphFloatType;
  /** MatMulNBits accuracy_level: 0 computes in the float type (default), 4 in int8 activations. */
  accuracyLevel?: 0 | 4;
  /** Where a quantized checkpoint's packed weights go (see resolveWeightCacheDir). */
  weightCacheDir?: string;
  /**
   * How attention is computed: `group-query` (default) with ONNX Runtime's GroupQueryAttention,
   * which also returns the whole cache as present_*; `matmul` with plain MatMul and Softmax
   * nodes over the past as given (matmul-attention.ts), with no present_* outputs: the form for
   * a host that keeps the cache itself and writes new_* into it; `adaptive`: either of the
   * two per run, chosen by a bool input `group_query` (one If node per layer), also without
   * present_* — the decoder engine's on CPU: GroupQueryAttention for prompt chunks and small
   * decode batches (its one kernel beats matmul's two dozen nodes there, and over a chunk it
   * attends only the valid past, with one copy of the scores), matmul for larger decode batches.
   */
  attention?: TextAttention;
}

export type TextAttention = 'group-query' | 'matmul' | 'adaptive';

/**
 * Decode batches up to this many rows, and every step of several tokens (prompt chunks), run
 * GroupQueryAttention in an `adaptive` graph; larger decode batches the matmul attention
 * (measured on the 2-core development machine: docs/decoder-engine.md, "Attention on CPU").
 */
export const GROUP_QUERY_MAX_DECODE_ROWS = 4;

/** The `group_query` input of an `adaptive` graph for a step of `batch` × `seq` tokens. */
export function useGroupQuery(batch: number, seq: number): boolean {
  return seq > 1 || batch <= GROUP_QUERY_MAX_DECODE_ROWS;
}

/** Names of the cache inputs and outputs of layer `layer`. */
export const cacheNames = (layer: number) => ({
  pastKey: `past_key_${layer}`,
  pastValue: `past_value_${layer}`,
  presentKey: `present_key_${layer}`,
  presentValue: `present_value_${layer}`,
  newKey: `new_key_${layer}`,
  newValue: `new_value_${layer}`,
});

/**
 * Rotary tables [maxPositions, headDim / 2] as HF computes them in float32:
 * inv_freq[t] = 1 / theta^(2t / headDim), angle = position * inv_freq[t].
 */
export function rotaryCaches(
  headDim: number,
  theta: number,
  maxPositions: number,
): { cos: Float32Array; sin: Float32Array } {
  const half = headDim / 2;
  const invFreq = Float32Array.from({ length: half }, (_, t) =>
    Math.fround(1 / Math.fround(theta ** Math.fround((2 * t) / headDim))),
  );
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let t = 0; t < half; t++) {
      const angle = Math.fround(p * invFreq[t]!);
      cos[p * half + t] = Math.cos(angle);
      sin[p * half + t] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Builds the text decoder graph of `checkpoint` (in memory; open it with createSession). */
export function buildTextGraph(
  checkpoint: Checkpoint,
  {
    quantizedFloatType = 'float32',
    accuracyLevel = 0,
    weightCacheDir,
    attention: attentionKind = 'group-query',
  }: TextGraphOptions = {},
): TextGraph {
  const t = checkpoint.config.text;
  const quant = checkpoint.quantization;
  const tied = checkpoint.config.tieWordEmbeddings || t.tieWordEmbeddings;
  const headDim = t.headDim;
  if (headDim % 16 !== 0) {
    throw new Error(
      `text head_dim must be a multiple of 16 for GroupQueryAttention with rotary on CPU, got ${headDim}`,
    );
  }
  const type = quant ? quantizedFloatType : graphFloatType(checkpoint.dtype);
  const g = new GraphBuilder({ name: 'idefics2-text' });

  // Float checkpoints: initializers read in place from the safetensors files (all of the
  // checkpoint's dtype). Quantized ones: everything from the packed weights file.
  const inPlace = quant ? undefined : new CheckpointWeights(checkpoint, type, 'the text graph');
  const packed: PackedWeights | undefined = quant
    ? packTextWeights(checkpoint, {
        type,
        cacheDir: resolveWeightCacheDir(checkpoint.dir, weightCacheDir),
      })
    : undefined;
  let weightBytes = 0;
  const weight = (name: string): string => {
    if (inPlace) {
      weightBytes += checkpoint.tensors.get(name)?.byteLength ?? 0;
      return inPlace.add(g, name);
    }
    weightBytes += packed!.tensors.get(name)?.length ?? 0;
    return packedInitializer(g, packed!, name);
  };
  /** x [.., in] times the linear layer `module` (HF weight [out, in]) -> [.., out]. */
  const linear = (x: string, module: string, output?: string) => {
    const out = output === undefined ? {} : { output };
    if (!packed?.quantized.has(module)) {
      return g.node1({
        opType: 'FusedMatMul',
        domain: 'com.microsoft',
        inputs: [x, weight(`${module}.weight`)],
        attributes: { transB: attr.int(1) },
        ...out,
      });
    }
    return matMulNBits(g, x, packed.quantized.get(module)!, {
      packed,
      weight,
      accuracyLevel,
      ...out,
    });
  };
  const rmsNorm = (x: string, name: string) =>
    g.node1({
      opType: 'SimplifiedLayerNormalization',
      inputs: [x, weight(name)],
      // stash_type 1: the statistics in float32 also for float16 x (G4).
      attributes: {
        axis: attr.int(-1),
        epsilon: attr.float(t.rmsNormEps),
        stash_type: attr.int(1),
      },
    });
  const cast = (x: string, to: GraphFloatType, output?: string) =>
    g.node1({
      opType: 'Cast',
      inputs: [x],
      attributes: { to: attr.int(onnxDataType(to)) },
      ...(output === undefined ? {} : { output }),
    });

  const embeds = g.input('inputs_embeds', 'float32', ['batch', 'seq', t.hiddenSize]);
  let x = type === 'float16' ? cast(embeds, 'float16') : embeds;
  const seqlens = g.input('seqlens_k', 'int32', ['batch']);
  const total = g.input('total_sequence_length', 'int32', []);
  const logitPositions = g.input('logit_positions', 'int64', ['batch', 'keep']);
  const positionIds = g.input('position_ids', 'int64', ['batch', 'seq']);
  const { cos, sin } = rotaryCaches(headDim, t.ropeTheta, t.maxPositionEmbeddings);
  const shape = [t.maxPositionEmbeddings, headDim / 2];
  // GQA takes the tables in the activations' type; HF too casts its float32 cos/sin to it.
  const table = (values: Float32Array) => (type === 'float16' ? float32sToFloat16(values) : values);
  const cosCache = g.initializer('cos_cache', type, shape, table(cos));
  const sinCache = g.initializer('sin_cache', type, shape, table(sin));
  const rope = (x: string, heads: number, output?: string) =>
    g.node1({
      opType: 'RotaryEmbedding',
      domain: 'com.microsoft',
      inputs: [x, positionIds, cosCache, sinCache],
      attributes: { interleaved: attr.int(0), num_heads: attr.int(heads) },
      ...(output === undefined ? {} : { output }),
    });
  const gqaAttributes = {
    num_heads: attr.int(t.numAttentionHeads),
    kv_num_heads: attr.int(t.numKeyValueHeads),
    // HF and ORT alike: query i sees keys j with i - window < j <= i (text-graph.test.ts).
    ...(t.slidingWindow === null ? {} : { local_window_size: attr.int(t.slidingWindow) }),
  };
  const attentionShape: AttentionShape = {
    heads: t.numAttentionHeads,
    kvHeads: t.numKeyValueHeads,
    headDim,
    window: t.slidingWindow,
    type,
  };
  let masks: AttentionMasks | undefined;
  let useGroupQuery: string | undefined;

  for (let layer = 0; layer < t.numHiddenLayers; layer++) {
    const p = `model.text_model.layers.${layer}.`;
    const names = cacheNames(layer);
    const cacheDims = ['batch', t.numKeyValueHeads, 'past', headDim];
    const pastKey = g.input(names.pastKey, type, cacheDims);
    const pastValue = g.input(names.pastValue, type, cacheDims);
    const n1 = rmsNorm(x, `${p}input_layernorm.weight`);
    const q = rope(linear(n1, `${p}self_attn.q_proj`), t.numAttentionHeads);
    const k = rope(linear(n1, `${p}self_attn.k_proj`), t.numKeyValueHeads, names.newKey);
    const v = linear(n1, `${p}self_attn.v_proj`, names.newValue);
    const newDims = ['batch', 'seq', t.numKeyValueHeads * headDim];
    g.output(names.newKey, type, newDims);
    g.output(names.newValue, type, newDims);
    const attentionDims = ['batch', 'seq', t.numAttentionHeads * headDim];
    /** GroupQueryAttention in `into`; its present_* are graph outputs when `presents`. */
    const groupQuery = (into: GraphBuilder, presents: boolean) => {
      const [out] = into.node({
        opType: 'GroupQueryAttention',
        domain: 'com.microsoft',
        inputs: [q, k, v, pastKey, pastValue, seqlens, total],
        outputs: presents
          ? [into.uniqueName(`attention_${layer}`), names.presentKey, names.presentValue]
          : 3,
        attributes: gqaAttributes,
      }) as [string];
      if (presents) {
        const presentDims = ['batch', t.numKeyValueHeads, 'present', headDim];
        into.output(names.presentKey, type, presentDims);
        into.output(names.presentValue, type, presentDims);
      }
      return out;
    };
    let attention: string;
    if (attentionKind === 'group-query') {
      attention = groupQuery(g, true);
    } else {
      masks ??= attentionMasks(g, { seqlens, embeds, past: pastKey }, attentionShape);
      const plain = (into: GraphBuilder) =>
        matmulAttention(into, { q, k, v, pastKey, pastValue, masks: masks! }, attentionShape);
      if (attentionKind === 'matmul') {
        attention = plain(g);
      } else {
        // adaptive: one If per layer, its branches reading q, k, v and the past from here.
        useGroupQuery ??= g.input('group_query', 'bool', []);
        const branch = (name: string, build: (into: GraphBuilder) => string) => {
          const sub = g.subgraph(`${name}_${layer}`);
          sub.output(build(sub), type, attentionDims);
          return attr.graph(sub.toGraph());
        };
        attention = g.node1({
          opType: 'If',
          inputs: [useGroupQuery],
          attributes: {
            then_branch: branch('group_query_attention', (sub) => groupQuery(sub, false)),
            else_branch: branch('matmul_attention', plain),
          },
        });
      }
    }
    x = g.node1({ opType: 'Add', inputs: [x, linear(attention, `${p}self_attn.o_proj`)] });

    const n2 = rmsNorm(x, `${p}post_attention_layernorm.weight`);
    const gate = linear(n2, `${p}mlp.gate_proj`);
    const up = linear(n2, `${p}mlp.up_proj`);
    const silu = g.node1({
      opType: 'Mul',
      inputs: [gate, g.node1({ opType: 'Sigmoid', inputs: [gate] })],
    });
    const hiddenMlp = g.node1({ opType: 'Mul', inputs: [silu, up] });
    x = g.node1({ opType: 'Add', inputs: [x, linear(hiddenMlp, `${p}mlp.down_proj`)] });
  }

  // [batch, seq, hidden] -> the rows at logit_positions [batch, keep, hidden]; the norm and the
  // head are per row, so gathering first changes nothing but the work.
  const picked = g.node1({
    opType: 'GatherND',
    inputs: [
      x,
      g.node1({
        opType: 'Unsqueeze',
        inputs: [logitPositions, g.initializer('last_axis', 'int64', [1], BigInt64Array.of(-1n))],
      }),
    ],
    attributes: { batch_dims: attr.int(1) },
  });
  const normed = rmsNorm(picked, 'model.text_model.norm.weight');
  const head = tied ? 'model.text_model.embed_tokens' : 'lm_head';
  const logits = linear(normed, head, type === 'float32' ? 'logits' : undefined);
  if (type === 'float16') cast(logits, 'float32', 'logits');
  g.output('logits', 'float32', ['batch', 'keep', t.vocabSize]);
  // Greedy selection in the graph: a 16-row decode step of a 32k vocabulary otherwise copies
  // 2 MB of logits into JavaScript and scans them there (docs/decoder-engine.md, "A step's
  // host work").
  g.node1({
    opType: 'ArgMax',
    inputs: ['logits'],
    attributes: { axis: attr.int(-1), keepdims: attr.int(0), select_last_index: attr.int(0) },
    output: 'greedy_tokens',
  });
  g.output('greedy_tokens', 'int64', ['batch', 'keep']);

  const name = `text graph of ${checkpoint.dir}`;
  return {
    model: inPlace
      ? inPlace.model(g, name)
      : { name, bytes: g.toBytes(), externalDataDir: packed!.dir },
    layers: t.numHiddenLayers,
    kvHeads: t.numKeyValueHeads,
    headDim,
    hidden: t.hiddenSize,
    vocab: t.vocabSize,
    type,
    cacheType: type,
    attention: attentionKind,
    weightBytes,
    weightFormat: quant
      ? `gptq-${quant.bits}bit-g${quant.groupSize}-${quant.sym ? 'sym' : 'asym'}${quant.lmHead ? '+lm_head' : ''}`
      : type,
    ...(packed ? { packed: { path: `${packed.dir}/${packed.file}`, reused: packed.reused } } : {}),
  };
}
