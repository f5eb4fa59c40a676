// The image encoder as one ONNX graph: uint8 sub-images -> rescale/normalize -> SigLIP vision
// tower -> modality projection -> perceiver resampler -> image_hidden_states
// (docs/model.md §2-§4), over the checkpoint's weights read in place: float32 (CPU), or float16
// (for CUDA: a float16 graph, statistics in float32, see graph-ops.ts) when the checkpoint
// is float16 (`loupe convert --dtype float16`). Inputs and the output are the same either way.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Checkpoint } from '../checkpoint/index.js';
import {
  DEFAULT_IMAGE_PROCESSOR_CONFIG,
  type ImageProcessorConfig,
  loadImageProcessorConfig,
  pixelLookupTables,
} from '../image/index.js';
import { attr, GraphBuilder, onnxDataType, type OnnxModel } from '../onnx/index.js';
import { Ops } from './graph-ops.js';

/** Graph input and output names (see buildVisionGraph). */
export const VISION_INPUTS = {
  pixels: 'pixels',
  patchMask: 'patch_mask',
  positionIds: 'position_ids',
} as const;
export const VISION_OUTPUT = 'image_hidden_states';

export interface BuildVisionGraphOptions {
  /**
   * Rescale/normalize settings; default the checkpoint's preprocessor_config.json, or
   * idefics2-8b's when the checkpoint has none (the reference unit-test checkpoint).
   */
  imageProcessor?: Pick<
    ImageProcessorConfig,
    'doRescale' | 'rescaleFactor' | 'doNormalize' | 'imageMean' | 'imageStd'
  >;
  /** Where a checkpoint with quantized vision linears has its weights packed. */
  weightCacheDir?: string;
}

/**
 * The image encoder of a float32 or float16 checkpoint as an in-memory ONNX model whose
 * weights stay in the checkpoint's files (open it with createSession; nothing is written, so
 * the checkpoint may be read-only). The graph computes in the checkpoint's dtype (`checkpoint.dtype`); a float16 graph
 * casts the normalized pixels to float16 and image_hidden_states back to float32.
 *
 * Inputs (n sub-images, each zero-padded bottom/right to the batch's H×W; P = ⌊H/p⌋·⌊W/p⌋):
 *   pixels        uint8 [n, 3, H, W]
 *   patch_mask    bool  [n, ⌊H/p⌋, ⌊W/p⌋]  true where the patch lies fully inside the image
 *   position_ids  int64 [n, P]             visionPositionIds of each sub-image
 * Output:
 *   image_hidden_states float32 [n, latents, text hidden]
 *
 * Use encodeImages to make the inputs and run it.
 *
 * Memory: the vision attention (com.microsoft MultiHeadAttention on CPU) holds the score
 * matrices of the whole batch at once, n·heads·P²·4 bytes per layer: about 160 MiB per
 * 980×653 sub-image on the tiny model (4 heads, P = 3220) and 1.4 GiB per 980×980 sub-image
 * on idefics2-8b (16 heads, P = 4900), so callers bound memory by sub-images per run.
 */
export function buildVisionGraph(
  checkpoint: Checkpoint,
  { imageProcessor, weightCacheDir }: BuildVisionGraphOptions = {},
): OnnxModel {
  const { vision: vc, perceiver: pc } = checkpoint.config;
  const normalize =
    imageProcessor ??
    (existsSync(join(checkpoint.dir, 'preprocessor_config.json'))
      ? loadImageProcessorConfig(checkpoint.dir)
      : DEFAULT_IMAGE_PROCESSOR_CONFIG);
  if (vc.numChannels !== 3) throw new Error(`vision num_channels must be 3, got ${vc.numChannels}`);
  const g = new GraphBuilder({ name: 'idefics2_vision' });
  const ops = new Ops(g, checkpoint, weightCacheDir === undefined ? {} : { weightCacheDir });

  const pixels = g.input(VISION_INPUTS.pixels, 'uint8', ['n', 3, 'height', 'width']);
  const patchMask = g.input(VISION_INPUTS.patchMask, 'bool', ['n', 'patch_rows', 'patch_cols']);
  const positionIds = g.input(VISION_INPUTS.positionIds, 'int64', ['n', 'patches']);

  // Rescale + normalize as a table lookup: index = channel·256 + value (float32, then the
  // graph's float type).
  const tables = pixelLookupTables(normalize);
  const table = new Float32Array(3 * 256);
  tables.forEach((t, c) => table.set(t, c * 256));
  const lut = g.initializer('pixel_table', 'float32', [3 * 256], table);
  const channelBase = g.initializer(
    'channel_base',
    'int64',
    [1, 3, 1, 1],
    BigInt64Array.of(0n, 256n, 512n),
  );
  const index = ops.op('Add', [ops.op('Cast', [pixels], { to: attr.int(7) }), channelBase]);
  const pixels32 = ops.op('Gather', [lut, index], { axis: attr.int(0) });
  const pixelValues = ops.type === 'float16' ? ops.cast(pixels32, 'float16') : pixels32;

  // Patch embedding: a valid, stride-p convolution drops the rows/cols past the last full
  // patch, then [n, hidden, rows, cols] -> [n, P, hidden] in row-major patch order.
  const vm = 'model.vision_model';
  const conv = ops.op(
    'Conv',
    [
      pixelValues,
      ops.weight(`${vm}.embeddings.patch_embedding.weight`),
      ops.weight(`${vm}.embeddings.patch_embedding.bias`),
    ],
    {
      kernel_shape: attr.ints([vc.patchSize, vc.patchSize]),
      strides: attr.ints([vc.patchSize, vc.patchSize]),
    },
  );
  const patches = ops.transpose(ops.reshape(conv, [0, 0, -1]), [0, 2, 1]);
  const positions = ops.op('Gather', [
    ops.weight(`${vm}.embeddings.position_embedding.weight`),
    positionIds,
  ]);
  let x = ops.op('Add', [patches, positions]);

  // Keys of padded patches are masked in the encoder and in the perceiver's context part.
  const keep = ops.reshape(patchMask, [0, -1]); // [n, P]
  const keyPadding = ops.op('Cast', [keep], { to: attr.int(6) }); // int32 [n, P], 1 = valid
  // No padding at all (one sub-image, or all of one size): attention can skip the mask.
  const allValid = ops.op('Cast', [ops.op('ReduceMin', [keyPadding], { keepdims: attr.int(0) })], {
    to: attr.int(9),
  });

  const visionHeads = { heads: vc.numAttentionHeads, headDim: vc.headDim };
  for (let l = 0; l < vc.numHiddenLayers; l++) {
    const p = `${vm}.encoder.layers.${l}`;
    const h = ops.layerNorm(x, `${p}.layer_norm1`, vc.layerNormEps);
    const q = ops.linear(h, `${p}.self_attn.q_proj`, { bias: true });
    const k = ops.linear(h, `${p}.self_attn.k_proj`, { bias: true });
    const v = ops.linear(h, `${p}.self_attn.v_proj`, { bias: true });
    const a = ops.multiHeadAttention(q, k, v, keyPadding, allValid, visionHeads, [
      'n',
      'patches',
      vc.hiddenSize,
    ]);
    x = ops.op('Add', [x, ops.linear(a, `${p}.self_attn.out_proj`, { bias: true })]);
    const h2 = ops.layerNorm(x, `${p}.layer_norm2`, vc.layerNormEps);
    const m = ops.linear(
      ops.geluTanh(ops.linear(h2, `${p}.mlp.fc1`, { bias: true })),
      `${p}.mlp.fc2`,
      { bias: true },
    );
    x = ops.op('Add', [x, m]);
  }
  x = ops.layerNorm(x, `${vm}.post_layernorm`, vc.layerNormEps);

  // Connector: SwiGLU modality projection to the text width, then the perceiver resampler.
  const c = 'model.connector';
  const context = ops.swiGlu(x, `${c}.modality_projection`);
  const pr = `${c}.perceiver_resampler`;
  const count = ops.op('Slice', [ops.op('Shape', [pixels]), ops.ints([0]), ops.ints([1])]);
  const latentsShape = ops.op('Concat', [count, ops.ints([pc.nLatents, pc.hiddenSize])], {
    axis: attr.int(0),
  });
  let latents = ops.op('Expand', [ops.weight(`${pr}.latents`), latentsShape]);
  // Keys are concat(context, latents); the latent keys are always valid.
  const latentKeep = ops.op('Expand', [
    g.initializer('latent_keep', 'bool', [1, pc.nLatents], new Uint8Array(pc.nLatents).fill(1)),
    ops.op('Concat', [count, ops.ints([pc.nLatents])], { axis: attr.int(0) }),
  ]);
  const perceiverMask = ops.additiveMask(
    ops.op('Concat', [keep, latentKeep], { axis: attr.int(1) }),
  );
  const perceiverHeads = {
    heads: pc.nHeads,
    kvHeads: pc.numKeyValueHeads,
    headDim: pc.headDim,
  };
  for (let l = 0; l < pc.depth; l++) {
    const p = `${pr}.layers.${l}`;
    const ln = ops.rmsNorm(latents, `${p}.input_latents_norm`, pc.rmsNormEps);
    const cn = ops.rmsNorm(context, `${p}.input_context_norm`, pc.rmsNormEps);
    const kv = ops.op('Concat', [cn, ln], { axis: attr.int(1) });
    const q = ops.linear(ln, `${p}.self_attn.q_proj`);
    const k = ops.linear(kv, `${p}.self_attn.k_proj`);
    const v = ops.linear(kv, `${p}.self_attn.v_proj`);
    const a = ops.attention(q, k, v, perceiverMask, perceiverHeads);
    latents = ops.op('Add', [latents, ops.linear(a, `${p}.self_attn.o_proj`)]);
    const post = ops.rmsNorm(latents, `${p}.post_attention_layernorm`, pc.rmsNormEps);
    latents = ops.op('Add', [latents, ops.swiGlu(post, `${p}.mlp`)]);
  }
  const out = ops.rmsNorm(latents, `${pr}.norm`, pc.rmsNormEps);
  if (ops.type === 'float16') {
    g.node1({
      opType: 'Cast',
      inputs: [out],
      output: VISION_OUTPUT,
      attributes: { to: attr.int(onnxDataType('float32')) },
    });
  } else {
    g.node1({ opType: 'Identity', inputs: [out], output: VISION_OUTPUT });
  }
  g.output(VISION_OUTPUT, 'float32', ['n', pc.nLatents, pc.hiddenSize]);

  return ops.model(`vision graph of ${checkpoint.dir}`);
}
