// `quantization_config` of a config.json: which weights of a checkpoint are stored as GPTQ
// integers, in how many bits, and in groups of how many inputs. Loupe reads (and `loupe
// convert --bits` writes) the GPTQ format as Hugging Face stores it; docs/quantization.md
// gives the exact bit layout. Anything it cannot run exactly is refused here, at open time.
import type { Idefics2Config } from '../config/index.js';

export type QuantBits = 4 | 8;
export const GROUP_SIZES = [32, 64, 128] as const;
export type GroupSize = (typeof GROUP_SIZES)[number];

export interface QuantizationConfig {
  method: 'gptq';
  bits: QuantBits;
  /** Inputs that share one scale and zero point. */
  groupSize: GroupSize;
  /** Symmetric: every zero point is 2^(bits-1). */
  sym: boolean;
  /** Whether lm_head is quantized too (GPTQModel's `lm_head` key). */
  lmHead: boolean;
  /**
   * Loupe's extension `loupe_vision`: the vision tower's, connector's and perceiver's linear
   * layers quantized too (8 bits recommended), or null when they stay float. Only layers whose
   * input width the group size divides are quantized (visionLinears).
   */
  vision: { bits: QuantBits; groupSize: GroupSize; sym: boolean } | null;
}

export class QuantizationConfigError extends Error {
  override readonly name = 'QuantizationConfigError';
}

/** The seven projections of a text layer that GPTQ quantizes. */
export const TEXT_PROJECTIONS = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.o_proj',
  'mlp.gate_proj',
  'mlp.up_proj',
  'mlp.down_proj',
] as const;

/** The block list GPTQ tools use for Idefics2's text decoder. */
export const TEXT_BLOCKS = 'model.text_model.layers';

/**
 * Parses `quantization_config` (null when absent). `file` names config.json in errors.
 * Refused, each with the reason: other methods (awq, bitsandbytes, ...), `desc_act: true`
 * (act-order permutes the groups; MatMulNBits needs contiguous groups), the `gptq_v2`
 * checkpoint format, bit widths other than 4 and 8, and group sizes other than 32/64/128.
 */
export function parseQuantizationConfig(raw: unknown, file: string): QuantizationConfig | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const q = (raw as Record<string, unknown>).quantization_config;
  if (q === undefined || q === null) return null;
  const fail = (message: string): never => {
    throw new QuantizationConfigError(`${file}: quantization_config: ${message}`);
  };
  if (typeof q !== 'object' || Array.isArray(q)) return fail('must be an object');
  const c = q as Record<string, unknown>;
  const show = (v: unknown) => JSON.stringify(v);
  if (c.quant_method !== 'gptq') {
    fail(
      `quant_method ${show(c.quant_method)} is not supported; Loupe loads "gptq" checkpoints (convert a float checkpoint with \`loupe convert --bits 4\`)`,
    );
  }
  const format = c.checkpoint_format ?? 'gptq';
  if (format !== 'gptq') {
    fail(
      `checkpoint_format ${show(format)} is not supported; Loupe reads "gptq" (v1: stored zero point = zero point - 1)`,
    );
  }
  if (c.bits !== 4 && c.bits !== 8) fail(`bits must be 4 or 8, got ${show(c.bits)}`);
  if (!GROUP_SIZES.includes(c.group_size as GroupSize)) {
    fail(`group_size must be one of ${GROUP_SIZES.join(', ')}, got ${show(c.group_size)}`);
  }
  if (c.desc_act === true) {
    fail(
      'desc_act: true (act-order) is not supported: its groups are not contiguous along the input; requantize with desc_act: false',
    );
  }
  if (c.desc_act !== undefined && c.desc_act !== false)
    fail(`desc_act must be a boolean, got ${show(c.desc_act)}`);
  const sym = c.sym ?? true;
  if (typeof sym !== 'boolean') fail(`sym must be a boolean, got ${show(sym)}`);
  const lmHead = c.lm_head ?? false;
  if (typeof lmHead !== 'boolean') fail(`lm_head must be a boolean, got ${show(lmHead)}`);
  const blocks = c.block_name_to_quantize;
  if (blocks !== undefined && blocks !== null && blocks !== TEXT_BLOCKS) {
    fail(
      `block_name_to_quantize ${show(blocks)} is not supported; Loupe quantizes "${TEXT_BLOCKS}"`,
    );
  }
  let vision: QuantizationConfig['vision'] = null;
  const v = c.loupe_vision;
  if (v !== undefined && v !== null) {
    if (typeof v !== 'object' || Array.isArray(v)) fail('loupe_vision must be an object');
    const o = v as Record<string, unknown>;
    if (o.bits !== 4 && o.bits !== 8) fail(`loupe_vision.bits must be 4 or 8, got ${show(o.bits)}`);
    if (!GROUP_SIZES.includes(o.group_size as GroupSize)) {
      fail(
        `loupe_vision.group_size must be one of ${GROUP_SIZES.join(', ')}, got ${show(o.group_size)}`,
      );
    }
    const vSym = o.sym ?? true;
    if (typeof vSym !== 'boolean') fail(`loupe_vision.sym must be a boolean, got ${show(vSym)}`);
    vision = {
      bits: o.bits as QuantBits,
      groupSize: o.group_size as GroupSize,
      sym: vSym as boolean,
    };
  }
  return {
    method: 'gptq',
    bits: c.bits as QuantBits,
    groupSize: c.group_size as GroupSize,
    sym: sym as boolean,
    lmHead: lmHead as boolean,
    vision,
  };
}

/** The `quantization_config` object written for `q` (what transformers' GPTQConfig reads). */
export function quantizationConfigJson(q: QuantizationConfig): Record<string, unknown> {
  return {
    quant_method: 'gptq',
    bits: q.bits,
    group_size: q.groupSize,
    sym: q.sym,
    desc_act: false,
    checkpoint_format: 'gptq',
    true_sequential: true,
    static_groups: false,
    damp_percent: 0.01,
    lm_head: q.lmHead,
    block_name_to_quantize: TEXT_BLOCKS,
    modules_in_block_to_quantize: [[...TEXT_PROJECTIONS]],
    // Loupe quantizes by round-to-nearest, not by GPTQ's error-correcting solver.
    meta: { quantizer: ['loupe:rtn'] },
    ...(q.vision
      ? {
          loupe_vision: {
            bits: q.vision.bits,
            group_size: q.vision.groupSize,
            sym: q.vision.sym,
          },
        }
      : {}),
  };
}

/** A quantized linear layer: its module name (tensors are `${name}.qweight` etc.) and shape. */
export interface QuantizedLinearSpec {
  name: string;
  /** Outputs (rows of the Hugging Face [out, in] weight). */
  n: number;
  /** Inputs. */
  k: number;
  bits: QuantBits;
  groupSize: number;
  sym: boolean;
}

/** Every linear layer `q` quantizes in a model of `config`, in checkpoint order. */
export function quantizedLinears(
  config: Idefics2Config,
  q: Pick<QuantizationConfig, 'bits' | 'groupSize' | 'sym' | 'lmHead' | 'vision'>,
): QuantizedLinearSpec[] {
  return [...textLinears(config, q), ...visionLinears(config, q)];
}

/** The text decoder's quantized linears (and lm_head when `q.lmHead`). */
export function textLinears(
  config: Idefics2Config,
  q: Pick<QuantizationConfig, 'bits' | 'groupSize' | 'sym' | 'lmHead'>,
): QuantizedLinearSpec[] {
  const at = { bits: q.bits, groupSize: q.groupSize, sym: q.sym };
  const t = config.text;
  const attention = t.numAttentionHeads * t.headDim;
  const kv = t.numKeyValueHeads * t.headDim;
  const shapes: Record<(typeof TEXT_PROJECTIONS)[number], [number, number]> = {
    'self_attn.q_proj': [attention, t.hiddenSize],
    'self_attn.k_proj': [kv, t.hiddenSize],
    'self_attn.v_proj': [kv, t.hiddenSize],
    'self_attn.o_proj': [t.hiddenSize, attention],
    'mlp.gate_proj': [t.intermediateSize, t.hiddenSize],
    'mlp.up_proj': [t.intermediateSize, t.hiddenSize],
    'mlp.down_proj': [t.hiddenSize, t.intermediateSize],
  };
  const out: QuantizedLinearSpec[] = [];
  for (let layer = 0; layer < t.numHiddenLayers; layer++) {
    for (const projection of TEXT_PROJECTIONS) {
      const [n, k] = shapes[projection];
      out.push({ name: `${TEXT_BLOCKS}.${layer}.${projection}`, n, k, ...at });
    }
  }
  if (q.lmHead) out.push({ name: 'lm_head', n: t.vocabSize, k: t.hiddenSize, ...at });
  return out;
}

/**
 * The vision side's quantized linears under `loupe_vision`: the SigLIP layers' attention
 * projections and MLP, the modality projection and the perceiver's projections and MLP,
 * each only when the group size divides its input width (idefics2-8b's fc2, 4304 wide,
 * stays float).
 */
export function visionLinears(
  config: Idefics2Config,
  q: Pick<QuantizationConfig, 'vision'>,
): QuantizedLinearSpec[] {
  if (!q.vision) return [];
  const { vision: v, perceiver: p, text: t } = config;
  const at = q.vision;
  const all: [string, number, number][] = [];
  for (let l = 0; l < v.numHiddenLayers; l++) {
    const layer = `model.vision_model.encoder.layers.${l}.`;
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj'])
      all.push([`${layer}self_attn.${proj}`, v.hiddenSize, v.hiddenSize]);
    all.push([`${layer}mlp.fc1`, v.intermediateSize, v.hiddenSize]);
    all.push([`${layer}mlp.fc2`, v.hiddenSize, v.intermediateSize]);
  }
  const c = 'model.connector.modality_projection.';
  all.push([`${c}gate_proj`, t.intermediateSize, v.hiddenSize]);
  all.push([`${c}up_proj`, t.intermediateSize, v.hiddenSize]);
  all.push([`${c}down_proj`, t.hiddenSize, t.intermediateSize]);
  for (let l = 0; l < p.depth; l++) {
    const layer = `model.connector.perceiver_resampler.layers.${l}.`;
    all.push([`${layer}self_attn.q_proj`, p.nHeads * p.headDim, p.hiddenSize]);
    all.push([`${layer}self_attn.k_proj`, p.numKeyValueHeads * p.headDim, p.hiddenSize]);
    all.push([`${layer}self_attn.v_proj`, p.numKeyValueHeads * p.headDim, p.hiddenSize]);
    all.push([`${layer}self_attn.o_proj`, p.hiddenSize, p.nHeads * p.headDim]);
    all.push([`${layer}mlp.gate_proj`, p.intermediateSize, p.hiddenSize]);
    all.push([`${layer}mlp.up_proj`, p.intermediateSize, p.hiddenSize]);
    all.push([`${layer}mlp.down_proj`, p.hiddenSize, p.intermediateSize]);
  }
  return all
    .filter(([, , k]) => k % at.groupSize === 0 && k % packFactor(at.bits) === 0)
    .map(([name, n, k]) => ({ name, n, k, ...at }));
}

/** Values per int32 word. */
export const packFactor = (bits: QuantBits) => 32 / bits;

/** The shapes of a quantized linear's four tensors. */
export function gptqShapes(
  { n, k }: Pick<QuantizedLinearSpec, 'n' | 'k'>,
  { bits, groupSize }: { bits: QuantBits; groupSize: number },
) {
  const f = packFactor(bits);
  return {
    qweight: [k / f, n],
    qzeros: [k / groupSize, Math.ceil(n / f)],
    scales: [k / groupSize, n],
    g_idx: [k],
  } as const;
}
