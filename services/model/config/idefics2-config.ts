// Idefics2's config.json, resolved as the reference (transformers 4.45-4.54) resolves it:
// class defaults for every missing key, and the perceiver rule (docs/model.md §1.1).
// Python's snake_case stops here; the rest of Loupe reads camelCase.

export interface VisionConfig {
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numChannels: number;
  /** Largest image side the position table covers, pixels (980 for idefics2-8b). */
  imageSize: number;
  patchSize: number;
  hiddenAct: 'gelu_pytorch_tanh';
  layerNormEps: number;
  /** hiddenSize / numAttentionHeads. */
  headDim: number;
  /** imageSize / patchSize: rows of the position table = numPatchesPerSide². */
  numPatchesPerSide: number;
}

export interface PerceiverConfig {
  hiddenAct: 'silu';
  /** Equals the text hidden size (the reference copies it over when they differ). */
  hiddenSize: number;
  rmsNormEps: number;
  /** Output rows per sub-image (64 for idefics2-8b). */
  nLatents: number;
  depth: number;
  nHeads: number;
  headDim: number;
  numKeyValueHeads: number;
  /** MLP width, fixed by the reference at 4 × hiddenSize. */
  intermediateSize: number;
}

export interface TextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** `head_dim` when given, else hiddenSize / numAttentionHeads. */
  headDim: number;
  hiddenAct: 'silu';
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Tokens; null for full attention. */
  slidingWindow: number | null;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  padTokenId: number | null;
}

export interface Idefics2Config {
  imageTokenId: number;
  tieWordEmbeddings: boolean;
  vision: VisionConfig;
  perceiver: PerceiverConfig;
  text: TextConfig;
}

export class ConfigFileError extends Error {
  override readonly name = 'ConfigFileError';
}

type Json = Record<string, unknown>;

/** Reads typed fields from one JSON object, with errors that name the file and the key. */
class Fields {
  constructor(
    private readonly raw: Json,
    private readonly file: string,
    private readonly prefix: string,
  ) {}

  private fail(key: string, expected: string, value: unknown): never {
    throw new ConfigFileError(
      `${this.file}: \`${this.prefix}${key}\` must be ${expected}, got ${JSON.stringify(value)}`,
    );
  }

  int(key: string, fallback: number, { min = 1 } = {}): number {
    const value = this.raw[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
      this.fail(key, `an integer >= ${min}`, value);
    }
    return value;
  }

  positive(key: string, fallback: number): number {
    const value = this.raw[key] ?? fallback;
    if (typeof value !== 'number' || !(value > 0)) this.fail(key, 'a positive number', value);
    return value;
  }

  bool(key: string, fallback: boolean): boolean {
    const value = this.raw[key] ?? fallback;
    if (typeof value !== 'boolean') this.fail(key, 'a boolean', value);
    return value;
  }

  oneOf<T extends string>(key: string, allowed: readonly T[], fallback: T): T {
    const value = this.raw[key] ?? fallback;
    if (!allowed.includes(value as T))
      this.fail(key, `one of ${allowed.map((a) => `"${a}"`).join(', ')}`, value);
    return value as T;
  }

  optionalInt(key: string, fallback: number | null, { min = 0 } = {}): number | null {
    const value = key in this.raw ? this.raw[key] : fallback;
    if (value === null) return null;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min)
      this.fail(key, `an integer >= ${min} or null`, value);
    return value;
  }

  tokenIds(key: string, fallback: number | null): number | number[] | null {
    const value = key in this.raw ? this.raw[key] : fallback;
    if (value === null || (typeof value === 'number' && Number.isInteger(value) && value >= 0))
      return value;
    if (Array.isArray(value) && value.every((v) => Number.isInteger(v) && (v as number) >= 0))
      return value as number[];
    this.fail(key, 'a token id, a list of token ids or null', value);
  }

  object(key: string): Json | undefined {
    const value = this.raw[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'object' || Array.isArray(value)) this.fail(key, 'an object', value);
    return value as Json;
  }

  check(condition: boolean, message: string): void {
    if (!condition) throw new ConfigFileError(`${this.file}: ${message}`);
  }
}

const MODEL_TYPES = {
  vision: ['idefics2', 'idefics2_vision'],
  perceiver: ['idefics2', 'idefics2_perceiver'],
  text: ['mistral'],
} as const;

function parseVision(raw: Json, file: string): VisionConfig {
  const f = new Fields(raw, file, 'vision_config.');
  f.oneOf('model_type', MODEL_TYPES.vision, 'idefics2');
  const hiddenSize = f.int('hidden_size', 768);
  const numAttentionHeads = f.int('num_attention_heads', 12);
  const imageSize = f.int('image_size', 224);
  const patchSize = f.int('patch_size', 32);
  f.check(
    hiddenSize % numAttentionHeads === 0,
    `\`vision_config.hidden_size\` ${hiddenSize} is not divisible by \`num_attention_heads\` ${numAttentionHeads}`,
  );
  f.check(
    imageSize % patchSize === 0,
    `\`vision_config.image_size\` ${imageSize} is not divisible by \`patch_size\` ${patchSize}`,
  );
  return {
    hiddenSize,
    intermediateSize: f.int('intermediate_size', 3072),
    numHiddenLayers: f.int('num_hidden_layers', 12),
    numAttentionHeads,
    numChannels: f.int('num_channels', 3),
    imageSize,
    patchSize,
    hiddenAct: f.oneOf('hidden_act', ['gelu_pytorch_tanh'] as const, 'gelu_pytorch_tanh'),
    layerNormEps: f.positive('layer_norm_eps', 1e-6),
    headDim: hiddenSize / numAttentionHeads,
    numPatchesPerSide: imageSize / patchSize,
  };
}

/**
 * MistralConfig's defaults, except when config.json has no text_config at all: then the
 * reference builds MistralConfig(max_position_embeddings=32768, rms_norm_eps=1e-5, ...).
 */
function parseText(raw: Json | undefined, file: string): TextConfig {
  const given = raw !== undefined;
  const f = new Fields(raw ?? {}, file, 'text_config.');
  f.oneOf('model_type', MODEL_TYPES.text, 'mistral');
  const hiddenSize = f.int('hidden_size', 4096);
  const numAttentionHeads = f.int('num_attention_heads', 32);
  const numKeyValueHeads = f.int('num_key_value_heads', 8);
  const explicitHeadDim = f.optionalInt('head_dim', null, { min: 1 });
  f.check(
    explicitHeadDim !== null || hiddenSize % numAttentionHeads === 0,
    `\`text_config.hidden_size\` ${hiddenSize} is not divisible by \`num_attention_heads\` ${numAttentionHeads}`,
  );
  f.check(
    numAttentionHeads % numKeyValueHeads === 0,
    `\`text_config.num_attention_heads\` ${numAttentionHeads} is not divisible by \`num_key_value_heads\` ${numKeyValueHeads}`,
  );
  return {
    vocabSize: f.int('vocab_size', 32000),
    hiddenSize,
    intermediateSize: f.int('intermediate_size', 14336),
    numHiddenLayers: f.int('num_hidden_layers', 32),
    numAttentionHeads,
    numKeyValueHeads,
    headDim: explicitHeadDim ?? hiddenSize / numAttentionHeads,
    hiddenAct: f.oneOf('hidden_act', ['silu'] as const, 'silu'),
    maxPositionEmbeddings: f.int('max_position_embeddings', given ? 4096 * 32 : 4096 * 8),
    rmsNormEps: f.positive('rms_norm_eps', given ? 1e-6 : 1e-5),
    ropeTheta: f.positive('rope_theta', 10000),
    slidingWindow: f.optionalInt('sliding_window', 4096, { min: 1 }),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    bosTokenId: f.optionalInt('bos_token_id', 1),
    eosTokenId: f.tokenIds('eos_token_id', 2),
    padTokenId: f.optionalInt('pad_token_id', given ? null : 0),
  };
}

function parsePerceiver(raw: Json, text: TextConfig, file: string): PerceiverConfig {
  const f = new Fields(raw, file, 'perceiver_config.');
  f.oneOf('model_type', MODEL_TYPES.perceiver, 'idefics2');
  let hiddenSize = f.int('hidden_size', 4096);
  let rmsNormEps = f.positive('rms_norm_eps', 1e-6);
  // docs/model.md §1.1: the reference overwrites both when the hidden sizes differ.
  if (hiddenSize !== text.hiddenSize) {
    hiddenSize = text.hiddenSize;
    rmsNormEps = text.rmsNormEps;
  }
  const nHeads = f.int('resampler_n_heads', 16);
  const numKeyValueHeads = f.int('num_key_value_heads', 4);
  f.check(
    nHeads % numKeyValueHeads === 0,
    `\`perceiver_config.resampler_n_heads\` ${nHeads} is not divisible by \`num_key_value_heads\` ${numKeyValueHeads}`,
  );
  return {
    hiddenAct: f.oneOf('hidden_act', ['silu'] as const, 'silu'),
    hiddenSize,
    rmsNormEps,
    nLatents: f.int('resampler_n_latents', 64),
    depth: f.int('resampler_depth', 3),
    nHeads,
    headDim: f.int('resampler_head_dim', 96),
    numKeyValueHeads,
    intermediateSize: 4 * hiddenSize,
  };
}

/** Resolves a parsed config.json. `file` names it in errors. */
export function parseIdefics2Config(raw: unknown, file = 'config.json'): Idefics2Config {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigFileError(`${file}: must hold a JSON object`);
  }
  const top = new Fields(raw as Json, file, '');
  top.oneOf('model_type', ['idefics2'] as const, 'idefics2');
  const text = parseText(top.object('text_config'), file);
  return {
    imageTokenId: top.int('image_token_id', 32001, { min: 0 }),
    tieWordEmbeddings: top.bool('tie_word_embeddings', false),
    vision: parseVision(top.object('vision_config') ?? {}, file),
    perceiver: parsePerceiver(top.object('perceiver_config') ?? {}, text, file),
    text,
  };
}
