// Small graph-building blocks shared by the vision tower and the connector: linear layers over
// weights read in place, norms, activations and (grouped-query) attention, in the checkpoint's
// float type (float32, or float16 for CUDA). In a float16 graph the statistics stay float32
// (docs/model.md §10 G1/G4/G5): LayerNormalization keeps them in its float32 stash, the RMS
// norms and the perceiver's softmax run on float32 casts, and masks are finite.
import type { Checkpoint } from '../checkpoint/index.js';
import {
  type AttributeValue,
  attr,
  CheckpointWeights,
  type GraphBuilder,
  type GraphFloatType,
  graphFloatType,
  type OnnxModel,
  onnxDataType,
} from '../onnx/index.js';
import {
  matMulNBits,
  packedInitializer,
  type PackedWeights,
  packWeights,
  resolveWeightCacheDir,
} from '../quant/index.js';

/** The additive mask value for padding keys: finfo(float32).min, as the reference (never -inf). */
export const MASK_MIN = -3.4028234663852886e38;
/** The same in a float16 graph: finfo(float16).min, as the reference in float16 (G5). */
export const MASK_MIN_FLOAT16 = -65504;

export interface OpsOptions {
  /** Where the packed weights of a checkpoint with quantized vision linears go. */
  weightCacheDir?: string;
}

/**
 * A GraphBuilder plus the checkpoint its weights come from, and a cache of constants. Float
 * weights are read in place from the checkpoint; when the checkpoint quantizes the vision
 * side too (`loupe_vision`, docs/quantization.md) every weight comes from its packed file and
 * the quantized linears run as MatMulNBits.
 */
export class Ops {
  readonly #consts = new Map<string, string>();
  /** The float type of weights and activations: the checkpoint's (F32 or F16). */
  readonly type: GraphFloatType;

  readonly #inPlace: CheckpointWeights | undefined;
  readonly #packed: PackedWeights | undefined;
  #packedBytes = 0;

  constructor(
    readonly g: GraphBuilder,
    checkpoint: Checkpoint,
    { weightCacheDir }: OpsOptions = {},
  ) {
    this.type = graphFloatType(checkpoint.dtype);
    if (checkpoint.quantization?.vision) {
      this.#packed = packWeights(checkpoint, {
        graph: 'vision',
        type: this.type,
        cacheDir: resolveWeightCacheDir(checkpoint.dir, weightCacheDir),
      });
    } else {
      this.#inPlace = new CheckpointWeights(checkpoint, this.type, 'the vision graph');
    }
  }

  /** The finished graph as an in-memory model over these weights. */
  model(name: string): OnnxModel {
    if (this.#inPlace) return this.#inPlace.model(this.g, name);
    const packed = this.#packed!;
    return {
      name,
      bytes: this.g.toBytes(),
      externalDataDir: packed.dir,
      weightBytes: this.#packedBytes,
      weightFormat: this.weightFormat,
    };
  }

  /** What the weights are: the float type, or `gptq-8bit-g128-sym` and the like. */
  get weightFormat(): string {
    const q = this.#packed ? [...this.#packed.quantized.values()][0] : undefined;
    return q ? `gptq-${q.bits}bit-g${q.groupSize}-${q.sym ? 'sym' : 'asym'}` : this.type;
  }

  /** The additive mask value of this graph's float type (finite, G5). */
  get maskMin(): number {
    return this.type === 'float16' ? MASK_MIN_FLOAT16 : MASK_MIN;
  }

  /**
   * A checkpoint tensor as an external initializer (no copy). `dims` may reshape it (same
   * element count), e.g. a conv weight seen as a matrix.
   */
  weight(name: string, dims?: readonly number[]): string {
    if (this.#inPlace) return this.#inPlace.add(this.g, name, dims);
    const packed = this.#packed!;
    this.#packedBytes += packed.tensors.get(name)?.length ?? 0;
    const stored = packedInitializer(this.g, packed, name);
    return dims === undefined ? stored : this.reshape(stored, dims);
  }

  /** An int64 constant (shapes, axes), shared between uses. */
  ints(values: readonly number[]): string {
    const key = `i64:${values.join(',')}`;
    let name = this.#consts.get(key);
    if (name === undefined) {
      name = this.g.uniqueName('const_i64');
      this.g.initializer(name, 'int64', [values.length], BigInt64Array.from(values.map(BigInt)));
      this.#consts.set(key, name);
    }
    return name;
  }

  /** A float32 scalar constant (rank 0), shared between uses. */
  scalar(value: number): string {
    const key = `f32:${value}`;
    let name = this.#consts.get(key);
    if (name === undefined) {
      name = this.g.uniqueName('const_f32');
      this.g.initializer(name, 'float32', [], Float32Array.of(value));
      this.#consts.set(key, name);
    }
    return name;
  }

  op(opType: string, inputs: readonly string[], attributes: Record<string, AttributeValue> = {}) {
    return this.g.node1({ opType, inputs, attributes });
  }

  /** A Cast of `x` to `type`. */
  cast(x: string, type: GraphFloatType): string {
    return this.op('Cast', [x], { to: attr.int(onnxDataType(type)) });
  }

  reshape(x: string, shape: readonly number[]): string {
    return this.op('Reshape', [x, this.ints(shape)]);
  }

  transpose(x: string, perm: readonly number[]): string {
    return this.op('Transpose', [x], { perm: attr.ints(perm) });
  }

  /** y = x Wᵀ (+ b): FusedMatMul with transB reads the stored [out, in] weight as it is. */
  linear(x: string, prefix: string, { bias = false } = {}): string {
    const spec = this.#packed?.quantized.get(prefix);
    const y = spec
      ? matMulNBits(this.g, x, spec, { packed: this.#packed!, weight: (n) => this.weight(n) })
      : this.g.node1({
          opType: 'FusedMatMul',
          domain: 'com.microsoft',
          inputs: [x, this.weight(`${prefix}.weight`)],
          attributes: { transB: attr.int(1), alpha: attr.float(1) },
        });
    return bias ? this.op('Add', [y, this.weight(`${prefix}.bias`)]) : y;
  }

  layerNorm(x: string, prefix: string, eps: number): string {
    return this.op(
      'LayerNormalization',
      [x, this.weight(`${prefix}.weight`), this.weight(`${prefix}.bias`)],
      // stash_type 1: mean and variance in float32 also when x is float16 (G4).
      { axis: attr.int(-1), epsilon: attr.float(eps), stash_type: attr.int(1) },
    );
  }

  /**
   * w ⊙ x · rsqrt(mean(x², -1) + eps) (Llama style; statistics in float32). A float16 x is
   * normalized in float32 and cast back before the weight, as the reference does.
   */
  rmsNorm(x: string, prefix: string, eps: number): string {
    const half = this.type === 'float16';
    const x32 = half ? this.cast(x, 'float32') : x;
    const square = this.op('Mul', [x32, x32]);
    const mean = this.op('ReduceMean', [square, this.ints([-1])], { keepdims: attr.int(1) });
    const rms = this.op('Sqrt', [this.op('Add', [mean, this.scalar(eps)])]);
    const normed = this.op('Div', [x32, rms]);
    return this.op('Mul', [
      half ? this.cast(normed, 'float16') : normed,
      this.weight(`${prefix}.weight`),
    ]);
  }

  silu(x: string): string {
    return this.op('Mul', [x, this.op('Sigmoid', [x])]);
  }

  /** gelu_pytorch_tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
  geluTanh(x: string): string {
    return this.op('Gelu', [x], { approximate: attr.str('tanh') });
  }

  /** down(silu(gate(x)) ⊙ up(x)), no biases (Idefics2MLP / the perceiver MLP). */
  swiGlu(x: string, prefix: string): string {
    const gate = this.silu(this.linear(x, `${prefix}.gate_proj`));
    const up = this.linear(x, `${prefix}.up_proj`);
    return this.linear(this.op('Mul', [gate, up]), `${prefix}.down_proj`);
  }

  /**
   * Non-causal attention with grouped-query heads, from projected q [n, S, heads·d] and
   * k, v [n, T, kvHeads·d] to [n, S, heads·d]. `mask` is additive, broadcastable to
   * [n, 1, 1, T]. Query head h uses KV head ⌊h / group⌋, so the query heads are folded
   * into the rows of their KV head instead of repeating K and V:
   *
   *   q [n, S, kv, group, d] -> [n, kv, group·S, d];  k, v [n, kv, T, d]
   *   softmax(q kᵀ · scale + mask) v -> [n, kv, group·S, d] -> [n, S, heads·d]
   *
   * The mask is float32 (additiveMask); in a float16 graph the scores are cast to float32
   * for the mask and the softmax, and the probabilities back to float16 (G1).
   */
  attention(
    q: string,
    k: string,
    v: string,
    mask: string,
    { heads, kvHeads, headDim }: { heads: number; kvHeads: number; headDim: number },
  ): string {
    const group = heads / kvHeads;
    const q5 = this.transpose(this.reshape(q, [0, 0, kvHeads, group, headDim]), [0, 2, 3, 1, 4]);
    const qh = this.reshape(q5, [0, 0, -1, headDim]);
    const kh = this.transpose(this.reshape(k, [0, 0, kvHeads, headDim]), [0, 2, 1, 3]);
    const vh = this.transpose(this.reshape(v, [0, 0, kvHeads, headDim]), [0, 2, 1, 3]);
    const scores = this.g.node1({
      opType: 'FusedMatMul',
      domain: 'com.microsoft',
      inputs: [qh, kh],
      attributes: { transB: attr.int(1), alpha: attr.float(1 / Math.sqrt(headDim)) },
    });
    const half = this.type === 'float16';
    const scores32 = half ? this.cast(scores, 'float32') : scores;
    const probs32 = this.op('Softmax', [this.op('Add', [scores32, mask])], { axis: attr.int(-1) });
    const probs = half ? this.cast(probs32, 'float16') : probs32;
    const o = this.reshape(this.op('MatMul', [probs, vh]), [0, 0, group, -1, headDim]);
    return this.reshape(this.transpose(o, [0, 3, 1, 2, 4]), [0, 0, -1]);
  }

  /**
   * Non-causal multi-head attention over projected q, k, v [n, S, heads·d] with a key padding
   * mask (int32 [n, S], 1 = valid), as ORT's com.microsoft MultiHeadAttention: it adds
   * MASK_MIN (MASK_MIN_FLOAT16 in a float16 graph) to the scores of padding keys and, on CPU,
   * keeps one [S, S] score matrix per (image, head) instead of the [n, heads, S, S] tensors
   * plain ops materialize (a third of the memory for five 980×653 sub-images on the tiny
   * model, and faster).
   *
   * When `allValid` (a bool scalar) is true the mask is left out: ORT's CPU kernel takes its
   * flash-attention path (tiled, no score matrices in memory) only without a mask, about 17%
   * faster for one 980×653 sub-image on the small checkpoint. Batches with padding take the
   * masked kernel. It is one `If` node whose branches read q, k, v from the enclosing graph.
   */
  multiHeadAttention(
    q: string,
    k: string,
    v: string,
    keyPadding: string,
    allValid: string,
    heads: { heads: number; headDim: number },
    outputDims: readonly (number | string)[],
  ): string {
    const branch = (name: string, padding: string) => {
      const sub = this.g.subgraph(name);
      const out = sub.node1({
        opType: 'MultiHeadAttention',
        domain: 'com.microsoft',
        inputs: padding === '' ? [q, k, v] : [q, k, v, '', padding],
        attributes: {
          num_heads: attr.int(heads.heads),
          scale: attr.float(1 / Math.sqrt(heads.headDim)),
          mask_filter_value: attr.float(this.maskMin),
        },
      });
      sub.output(out, this.type, outputDims);
      return attr.graph(sub.toGraph());
    };
    return this.op('If', [allValid], {
      then_branch: branch('attention_unpadded', ''),
      else_branch: branch('attention_padded', keyPadding),
    });
  }

  /**
   * The additive attention mask [n, 1, 1, T] from a bool key mask [n, T], float32 (softmax
   * inputs are float32 in either graph type): 0 or the graph type's mask minimum.
   */
  additiveMask(keep: string): string {
    const bias = this.op('Where', [keep, this.scalar(0), this.scalar(this.maskMin)]);
    return this.op('Unsqueeze', [bias, this.ints([1, 2])]);
  }
}
