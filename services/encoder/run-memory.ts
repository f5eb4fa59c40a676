// What one model run (a batch) costs in memory, estimated before it runs from the model's
// sizes and the batch's shape, so the batcher can keep runs within LOUPE_ENCODER_MEMORY_BUDGET_BYTES
// (docs/services.md, "The encoder's memory budget").
//
// The vision graph (services/model/vision/vision-graph.ts) on ONNX Runtime's CPU provider, in
// float32 (a float16 graph is cast to float32 around most CPU kernels). For n sub-images padded
// to H×W, X = 3·n·H·W pixel values, P = ⌊H/p⌋·⌊W/p⌋ patches each, N = n·P tokens:
//
//   inputs       X (the padded uint8 batch) + 9·N (int64 position ids, the patch mask)
//                + 8·n·latents·text_hidden (the float32 output and the per-dtype blocks)
//   pixels       16·X: the normalization's int64 table index and its sum with the channel
//                offsets (Cast, Add), live together before the Gather
//   tower        4·N·(10·hidden) for a layer around its attention (the residual, q, k, v, their
//                head-major copies, the attention's output and scratch), plus, when the batch
//                is padded, 4·n·heads·P²: com.microsoft MultiHeadAttention's masked CPU kernel
//                materialises one [n, heads, P, P] float32 score tensor for the whole batch
//                (its key-padding mask is only [n, P]). An unpadded batch takes the flash
//                kernel, which keeps only L2-sized tiles per thread: no quadratic term.
//   mlp          4·N·(2·intermediate + 2·hidden): fc1's output and GELU's, the residual, the norm
//   connector    4·N·(3·text_intermediate + 2·hidden): the SwiGLU's gate, SiLU and up
//   perceiver    4·N·4·text_hidden (the context and its RMS norm's temporaries)
//                + 4·n·(P + latents)·(text_hidden + 4·kv_heads·head_dim) (keys and values,
//                their head-major copies) + 2·4·n·heads·latents·(P + latents) (the scores
//                with the mask added, and the probabilities)
//
// Layers run one after the other and their tensors are freed as they go, so the number of
// layers does not enter; the peak is the largest stage, not their sum. The pixel stage comes
// first and its buffers stay resident in ONNX Runtime's arena (it keeps what it allocated),
// later stages reusing them only in part, so it is added rather than maxed:
//
//   estimate = SLACK · (inputs + pixels + max(tower, mlp, connector, perceiver)) + FIXED
//
// SLACK covers the arena's fragmentation (a large tensor can be carved from a region whose
// tail then serves smaller ones from untouched pages) and FIXED the kernels' per-thread
// scratch. Against the resident memory a real run adds (the rise of VmHWM), the estimate is
// 1.12-1.19 times the measure for padded batches, whose scores dominate, and 1.13-1.65 times
// for unpadded ones, on the tiny and small checkpoints and one between them (run-memory.test.ts
// keeps checking it lies between 1 and 3 times).
import type { Idefics2Config } from '../model/index.js';

/** The model sizes a run's memory depends on (plain data: it crosses from the model thread). */
export interface RunMemoryModel {
  patchSize: number;
  vision: { hiddenSize: number; intermediateSize: number; numAttentionHeads: number };
  /** The modality projection: a SwiGLU from the vision width to the text width. */
  connector: { intermediateSize: number; hiddenSize: number };
  perceiver: {
    nLatents: number;
    nHeads: number;
    numKeyValueHeads: number;
    headDim: number;
    hiddenSize: number;
  };
}

export function runMemoryModel(config: Idefics2Config): RunMemoryModel {
  const { vision, perceiver, text } = config;
  return {
    patchSize: vision.patchSize,
    vision: {
      hiddenSize: vision.hiddenSize,
      intermediateSize: vision.intermediateSize,
      numAttentionHeads: vision.numAttentionHeads,
    },
    connector: { intermediateSize: text.intermediateSize, hiddenSize: text.hiddenSize },
    perceiver: {
      nLatents: perceiver.nLatents,
      nHeads: perceiver.nHeads,
      numKeyValueHeads: perceiver.numKeyValueHeads,
      headDim: perceiver.headDim,
      hiddenSize: perceiver.hiddenSize,
    },
  };
}

/** A run's shape: `count` sub-images padded to `height` × `width`. */
export interface RunShape {
  count: number;
  height: number;
  width: number;
  /**
   * Whether some sub-image leaves patches of the padded canvas empty: then the attention
   * takes its masked kernel, which holds the score matrices.
   */
  padded: boolean;
}

export interface Size {
  height: number;
  width: number;
}

/** The shape of a run of these sub-images (encodeImages pads them to the largest sides). */
export function runShape(sizes: readonly Size[], patchSize: number): RunShape {
  let height = 0;
  let width = 0;
  for (const s of sizes) {
    height = Math.max(height, s.height);
    width = Math.max(width, s.width);
  }
  const rows = Math.floor(height / patchSize);
  const cols = Math.floor(width / patchSize);
  // A patch is valid iff it lies fully inside its sub-image (encode-images.ts).
  const padded = sizes.some(
    (s) => Math.floor(s.height / patchSize) < rows || Math.floor(s.width / patchSize) < cols,
  );
  return { count: sizes.length, height, width, padded };
}

/** Multiplies the sum of the stages, for the arena's fragmentation (see the file comment). */
export const SLACK = 1.15;
/** Added to every run: the kernels' per-thread scratch and buffers outside the arena. */
export const FIXED_BYTES = 8 * 2 ** 20;
/** Bytes per activation: the CPU provider computes in float32. */
const F = 4;

export interface RunMemoryEstimate {
  /** The estimate of the resident memory the run adds at its peak, bytes. */
  bytes: number;
  /** Each stage's live bytes (see the file comment). */
  stages: {
    inputs: number;
    pixels: number;
    tower: number;
    mlp: number;
    connector: number;
    perceiver: number;
  };
}

/** The estimate for a run of `shape` on `model`, with its stages. */
export function estimateRun(model: RunMemoryModel, shape: RunShape): RunMemoryEstimate {
  const { count: n, height, width, padded } = shape;
  const { vision: v, connector: c, perceiver: pr } = model;
  const values = 3 * n * height * width;
  const patches = Math.floor(height / model.patchSize) * Math.floor(width / model.patchSize);
  const tokens = n * patches;
  const keys = n * (patches + pr.nLatents);
  const stages = {
    inputs: values + 9 * tokens + 2 * F * n * pr.nLatents * c.hiddenSize,
    pixels: 16 * values,
    tower:
      F * tokens * 10 * v.hiddenSize +
      (padded ? F * n * v.numAttentionHeads * patches * patches : 0),
    mlp: F * tokens * (2 * v.intermediateSize + 2 * v.hiddenSize),
    connector: F * tokens * (3 * c.intermediateSize + 2 * v.hiddenSize),
    perceiver:
      F * tokens * 4 * pr.hiddenSize +
      F * keys * (pr.hiddenSize + 4 * pr.numKeyValueHeads * pr.headDim) +
      2 * F * pr.nHeads * pr.nLatents * keys,
  };
  const peak = Math.max(stages.tower, stages.mlp, stages.connector, stages.perceiver);
  const bytes = Math.ceil(SLACK * (stages.inputs + stages.pixels + peak)) + FIXED_BYTES;
  return { bytes, stages };
}

/** The estimate, bytes, for a run of sub-images of these sizes. */
export function estimateRunBytes(model: RunMemoryModel, sizes: readonly Size[]): number {
  return sizes.length === 0 ? 0 : estimateRun(model, runShape(sizes, model.patchSize)).bytes;
}

/** The estimate for one sub-image of the model's largest size (`maxSide` square) alone. */
export function largestRunBytes(model: RunMemoryModel, maxSide: number): number {
  return estimateRunBytes(model, [{ height: maxSide, width: maxSide }]);
}
