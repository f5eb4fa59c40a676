// A random Idefics2 checkpoint in the GPTQ layout Hugging Face stores (AutoGPTQ/optimum,
// checkpoint_format "gptq"), for benchmarks at real sizes: every projection of every text
// layer as qweight/qzeros/scales/g_idx, everything else float32, sharded with an index, and
// the tiny tokenizer. The weights are generated directly in their stored form, a chunk at a
// time, and written as they are made: memory stays at one 16 MiB chunk whatever the size
// (the idefics2-8b shape is ~9.3 GB), and the time is the disk's.
//
// The GPTQ tensors of a linear layer with HF weight [out = N, in = K], b bits, group g:
//   qweight I32 [K·b/32, N]      input k of output n: word [k / (32/b), n], bits b·(k % (32/b))
//   qzeros  I32 [K/g, ⌈N·b/32⌉]  group j, output n: word [j, n / (32/b)], bits b·(n % (32/b));
//                                stored value = zero point − 1 (7 for symmetric 4-bit, 127 for 8-bit)
//   scales  F16 [K/g, N]
//   g_idx   I32 [K]              g_idx[k] = ⌊k/g⌋
//   W[n, k] = scales[k/g, n] · (q[k, n] − (stored zero + 1))
// Random words are valid packed values (every b-bit field is in [0, 2^b)), so qweight is
// just random int32s.
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { expectedTensors } from '../../services/model/checkpoint/index.js';
import { parseIdefics2Config } from '../../services/model/config/index.js';
import { float32ToFloat16 } from '../../services/model/convert/index.js';
import {
  DEFAULT_IMAGE_PROCESSOR_CONFIG,
  processorConfigFiles,
} from '../../services/model/image/index.js';
import {
  elementCount,
  encodeSafetensorsLayout,
  SAFETENSORS_DTYPES as DTYPES,
  type SafetensorsDtype,
} from '../../services/model/safetensors/index.js';
import { tinyModelConfig, tinyTokenizerDir } from '../../services/model/tiny/index.js';

/** Bumped whenever the files this writes change, so an old bench checkpoint is remade. */
export const RANDOM_GPTQ_FORMAT_VERSION = 1;
/** The marker file a finished checkpoint carries. */
export const BENCH_MARKER_FILE = 'loupe-bench.json';
export const BENCH_MARKER_FORMAT = 'loupe-random-gptq';

export type GptqBits = 4 | 8;

export interface RandomGptqOptions {
  /** Checkpoint directory; written as `out.tmp` and renamed when complete. */
  out: string;
  /** The raw config.json object; quantization_config and torch_dtype are set from the options. */
  config: Record<string, unknown>;
  bits: GptqBits;
  /** Input rows per scale/zero group; -1: one group over the whole input (per-channel). */
  groupSize: number;
  seed: number;
  /** Largest shard, bytes (Hugging Face's default is 5 GB; 2 GB here). */
  shardBytes?: number;
  /** Recorded in the marker: which shape this is (e.g. "8b", "small"). */
  shape?: string;
  /**
   * Write every tensor as float32 instead (no quantization_config; `bits` and `groupSize`
   * unused): a float checkpoint of the shape, for timing `loupe convert --bits` on it.
   */
  float?: boolean;
}

export interface BenchMarker {
  format: typeof BENCH_MARKER_FORMAT;
  version: number;
  shape: string;
  bits: GptqBits;
  groupSize: number;
  seed: number;
  /** True for a float32 checkpoint (see RandomGptqOptions.float). */
  float?: boolean;
  /** Tensor bytes (the index's total_size). */
  totalBytes: number;
  files: string[];
  tensors: number;
}

export interface RandomGptqSummary extends BenchMarker {
  dir: string;
  ms: number;
}

export class RandomGptqError extends Error {
  override readonly name = 'RandomGptqError';
}

/** The projections GPTQ quantizes: every linear layer of every text decoder layer. */
const QUANTIZED =
  /^model\.text_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/;

/** True when `name` (a float checkpoint's tensor name) is stored quantized in a GPTQ checkpoint. */
export function isGptqQuantized(name: string): boolean {
  return QUANTIZED.test(name);
}

/** The quantization_config block Hugging Face writes for these settings. */
export function gptqQuantizationConfig(bits: GptqBits, groupSize: number) {
  return {
    quant_method: 'gptq',
    bits,
    group_size: groupSize,
    sym: true,
    desc_act: false,
    checkpoint_format: 'gptq',
    true_sequential: true,
    damp_percent: 0.01,
    static_groups: false,
    lm_head: false,
    block_name_to_quantize: 'model.text_model.layers',
  };
}

/** How a tensor's elements are made. */
type Fill =
  | { kind: 'const'; word: number } // every 32-bit word (F32 bits or I32) the same
  | { kind: 'uniform'; std: number } // F32, uniform with this standard deviation
  | { kind: 'words' } // I32, random
  | { kind: 'scales'; base: number } // F16, base × [0.75, 1.25)
  | { kind: 'gidx'; group: number }; // I32, ⌊k / group⌋

interface PlannedTensor {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  bytes: number;
  fill: Fill;
}

const ONE_F32 = 0x3f800000;

/** Every tensor the checkpoint stores, in expectedTensors order, each with how to fill it. */
export function planGptqTensors(
  config: Record<string, unknown>,
  bits: GptqBits,
  groupSize: number,
  { float = false }: { float?: boolean } = {},
): PlannedTensor[] {
  if (bits !== 4 && bits !== 8) throw new RandomGptqError(`bits must be 4 or 8, got ${bits}`);
  if (!(groupSize === -1 || (Number.isSafeInteger(groupSize) && groupSize > 0))) {
    throw new RandomGptqError(`groupSize must be a positive integer or -1, got ${groupSize}`);
  }
  const perWord = 32 / bits;
  const parsed = parseIdefics2Config(config);
  const planned: PlannedTensor[] = [];
  const add = (name: string, dtype: SafetensorsDtype, shape: number[], fill: Fill) =>
    planned.push({ name, dtype, shape, bytes: elementCount(shape) * DTYPES[dtype].size, fill });
  for (const [name, shape] of expectedTensors(parsed)) {
    if (!float && isGptqQuantized(name)) {
      const [n, k] = shape as [number, number];
      const group = groupSize === -1 ? k : groupSize;
      if (k % perWord !== 0 || k % group !== 0) {
        throw new RandomGptqError(
          `${name}: input size ${k} must be a multiple of ${perWord} (${bits}-bit packing) and of the group size ${group}`,
        );
      }
      const base = name.slice(0, -'.weight'.length);
      const zero = bits === 4 ? 0x77777777 : 0x7f7f7f7f; // stored zero point − 1, every field
      // |W| ~ std(q − zero)·scale = 0.29/√K (4-bit; 0.29 for 8-bit too): activations stay finite.
      const scale = 0.5 / (Math.sqrt(k) * 2 ** (bits - 1));
      add(`${base}.qweight`, 'I32', [k / perWord, n], { kind: 'words' });
      add(`${base}.qzeros`, 'I32', [k / group, Math.ceil(n / perWord)], {
        kind: 'const',
        word: zero,
      });
      add(`${base}.scales`, 'F16', [k / group, n], { kind: 'scales', base: scale });
      add(`${base}.g_idx`, 'I32', [k], { kind: 'gidx', group });
      continue;
    }
    let fill: Fill;
    if (name.endsWith('.bias')) fill = { kind: 'const', word: 0 };
    else if (/norm/.test(name)) fill = { kind: 'const', word: ONE_F32 };
    else if (name.endsWith('perceiver_resampler.latents')) fill = { kind: 'uniform', std: 1 };
    else if (name.endsWith('embed_tokens.weight') || name.endsWith('position_embedding.weight'))
      fill = { kind: 'uniform', std: 0.02 };
    else fill = { kind: 'uniform', std: 1 / Math.sqrt(elementCount(shape.slice(1))) };
    add(name, 'F32', shape, fill);
  }
  return planned;
}

/** Consecutive tensors packed into shards of at most `shardBytes` (one tensor may exceed it). */
function shard(tensors: PlannedTensor[], shardBytes: number): PlannedTensor[][] {
  const shards: PlannedTensor[][] = [];
  let current: PlannedTensor[] = [];
  let size = 0;
  for (const t of tensors) {
    if (current.length > 0 && size + t.bytes > shardBytes) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(t);
    size += t.bytes;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

const CHUNK_BYTES = 16 << 20;

/** xorshift32 from a seed and a stream number (never 0). */
function initialState(seed: number, stream: number): number {
  let h = Math.imul((seed ^ 0x9e3779b9) >>> 0, 0x85ebca6b) ^ Math.imul(stream + 1, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  return h | 0 || 0x2545f491;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
}

/** Generates tensor `t` chunk by chunk into `buffer` and writes each chunk to `fd`. */
function writeTensor(fd: number, t: PlannedTensor, state: number, buffer: ArrayBuffer): void {
  const f32 = new Float32Array(buffer);
  const i32 = new Int32Array(buffer);
  const u16 = new Uint16Array(buffer);
  const bytes = new Uint8Array(buffer);
  const elementSize = DTYPES[t.dtype].size;
  const total = t.bytes / elementSize;
  const perChunk = CHUNK_BYTES / elementSize;
  let x = state;
  const fill = t.fill;
  // A constant tensor: fill the chunk once.
  if (fill.kind === 'const') i32.fill(fill.word, 0, Math.min(total, perChunk));
  const table = new Uint16Array(256);
  if (fill.kind === 'scales') {
    for (let j = 0; j < 256; j++) table[j] = float32ToFloat16(fill.base * (0.75 + j / 512));
  }
  for (let start = 0; start < total; start += perChunk) {
    const n = Math.min(perChunk, total - start);
    switch (fill.kind) {
      case 'const':
        break;
      case 'uniform': {
        // Uniform on [−a, a) with a = std·√3: the int32 times a/2³¹.
        const k = (fill.std * Math.sqrt(3)) / 2147483648;
        for (let i = 0; i < n; i++) {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          f32[i] = x * k;
        }
        break;
      }
      case 'words':
        for (let i = 0; i < n; i++) {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          i32[i] = x;
        }
        break;
      case 'scales':
        for (let i = 0; i < n; i++) {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          u16[i] = table[x & 0xff]!;
        }
        break;
      case 'gidx':
        for (let i = 0; i < n; i++) i32[i] = Math.floor((start + i) / fill.group);
        break;
    }
    writeAll(fd, bytes.subarray(0, n * elementSize));
  }
}

interface TokenizerJson {
  model: { vocab: Record<string, number> };
  added_tokens: Array<{ id: number; content: string }>;
}

/** The tiny tokenizer's size and Idefics2 special tokens. */
export function benchTokenizerIds(): {
  vocabSize: number;
  imageTokenId: number;
  endOfUtteranceId: number;
  fakeTokenId: number;
} {
  const dir = tinyTokenizerDir();
  const tokenizer = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  const ids = [...Object.values(tokenizer.model.vocab), ...tokenizer.added_tokens.map((t) => t.id)];
  const find = (content: string) => {
    const token = tokenizer.added_tokens.find((t) => t.content === content);
    if (!token) throw new RandomGptqError(`${dir}/tokenizer.json lacks ${content}`);
    return token.id;
  };
  return {
    vocabSize: Math.max(...ids) + 1,
    imageTokenId: find('<image>'),
    endOfUtteranceId: find('<end_of_utterance>'),
    fakeTokenId: find('<fake_token_around_image>'),
  };
}

export type BenchShape = '8b' | 'small' | 'tiny';

/**
 * config.json for a bench shape with the tiny tokenizer's special tokens: "8b" is
 * HuggingFaceM4/idefics2-8b's architecture (every size as the published config resolves),
 * "small" and "tiny" are the sizes of `loupe tiny-model` with the 8b vocabulary (32003).
 */
export function benchShapeConfig(shape: BenchShape, vocabSize = 32003): Record<string, unknown> {
  const { imageTokenId } = benchTokenizerIds();
  if (shape !== '8b') return tinyModelConfig(shape, { vocabSize, imageTokenId });
  return {
    architectures: ['Idefics2ForConditionalGeneration'],
    model_type: 'idefics2',
    image_token_id: imageTokenId,
    tie_word_embeddings: false,
    use_cache: true,
    torch_dtype: 'float32',
    vision_config: {
      model_type: 'idefics2_vision',
      hidden_size: 1152,
      intermediate_size: 4304,
      num_hidden_layers: 27,
      num_attention_heads: 16,
      num_channels: 3,
      image_size: 980,
      patch_size: 14,
      hidden_act: 'gelu_pytorch_tanh',
      layer_norm_eps: 1e-6,
    },
    perceiver_config: {
      model_type: 'idefics2_perceiver',
      hidden_act: 'silu',
      hidden_size: 4096,
      rms_norm_eps: 1e-5,
      resampler_n_latents: 64,
      resampler_depth: 3,
      resampler_n_heads: 16,
      resampler_head_dim: 96, // the reference's default; idefics2-8b's config sets none
      num_key_value_heads: 4,
    },
    text_config: {
      model_type: 'mistral',
      vocab_size: vocabSize,
      hidden_size: 4096,
      intermediate_size: 14336,
      num_hidden_layers: 32,
      num_attention_heads: 32,
      num_key_value_heads: 8,
      hidden_act: 'silu',
      max_position_embeddings: 32768,
      rms_norm_eps: 1e-5,
      rope_theta: 10000.0,
      sliding_window: 4096,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
      pad_token_id: 0,
    },
  };
}

/**
 * The tiny tokenizer.json with filler pieces `▁tok<id>` for the ids between its last token
 * and the model's vocabulary, so that every id the model can emit decodes (the gateway's
 * detokenizer refuses ids the tokenizer lacks). No merge produces a filler, so encoding is
 * unchanged.
 */
function paddedTokenizer(json: TokenizerJson, vocabSize: number): TokenizerJson {
  const ids = [...Object.values(json.model.vocab), ...json.added_tokens.map((t) => t.id)];
  const have = Math.max(...ids) + 1;
  if (vocabSize <= have) return json;
  const vocab = { ...json.model.vocab };
  for (let id = have; id < vocabSize; id++) vocab[`▁tok${id}`] = id;
  return { ...json, model: { ...json.model, vocab } };
}

/** The marker of a finished bench checkpoint in `dir`, or undefined. */
export function readBenchMarker(dir: string): BenchMarker | undefined {
  try {
    const marker = JSON.parse(readFileSync(join(dir, BENCH_MARKER_FILE), 'utf8')) as BenchMarker;
    return marker.format === BENCH_MARKER_FORMAT ? marker : undefined;
  } catch {
    return undefined;
  }
}

/** Removes `dir` only if it is missing, empty, or a bench checkpoint (it has the marker). */
function removeOwnDir(dir: string): void {
  if (!existsSync(dir)) return;
  if (readdirSync(dir).length > 0 && !readBenchMarker(dir)) {
    throw new RandomGptqError(
      `${dir} exists and is not a bench checkpoint (no ${BENCH_MARKER_FILE}); not replacing it`,
    );
  }
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Writes the checkpoint. An unfinished `out.tmp` from an earlier run is replaced; `out`
 * itself is replaced only if it is a bench checkpoint (or empty).
 */
export function writeRandomGptqCheckpoint({
  out,
  config: rawConfig,
  bits,
  groupSize,
  seed,
  shardBytes = 2_000_000_000,
  shape = 'custom',
  float = false,
}: RandomGptqOptions): RandomGptqSummary {
  if (endianness() !== 'LE') throw new RandomGptqError('needs a little-endian host');
  const started = performance.now();
  const config = {
    ...rawConfig,
    torch_dtype: 'float32',
    ...(float ? {} : { quantization_config: gptqQuantizationConfig(bits, groupSize) }),
  };
  const tensors = planGptqTensors(config, bits, groupSize, { float });
  const parsed = parseIdefics2Config(config);
  const tokenIds = benchTokenizerIds();
  if (parsed.text.vocabSize < tokenIds.vocabSize) {
    throw new RandomGptqError(
      `vocab_size ${parsed.text.vocabSize} is smaller than the tokenizer's ${tokenIds.vocabSize}`,
    );
  }
  if (parsed.imageTokenId !== tokenIds.imageTokenId) {
    throw new RandomGptqError(
      `image_token_id ${parsed.imageTokenId} is not the tokenizer's <image> (${tokenIds.imageTokenId})`,
    );
  }

  if (existsSync(out) && readdirSync(out).length > 0 && !readBenchMarker(out)) {
    throw new RandomGptqError(
      `${out} exists and is not a bench checkpoint (no ${BENCH_MARKER_FILE}); not replacing it`,
    );
  }
  const tmp = `${out}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });

  const shards = shard(tensors, shardBytes);
  const names =
    shards.length === 1
      ? ['model.safetensors']
      : shards.map(
          (_, i) =>
            `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`,
        );
  const buffer = new ArrayBuffer(CHUNK_BYTES);
  const weightMap: Record<string, string> = {};
  const streamOf = new Map(tensors.map((t, i) => [t.name, i]));
  let totalBytes = 0;
  shards.forEach((group, s) => {
    const byName = Object.fromEntries(group.map((t) => [t.name, t]));
    const { header, order, dataLength } = encodeSafetensorsLayout(
      Object.fromEntries(group.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }])),
      { metadata: { format: 'pt' } },
    );
    const fd = openSync(join(tmp, names[s]!), 'w');
    try {
      writeAll(fd, header);
      for (const name of order) {
        writeTensor(fd, byName[name]!, initialState(seed, streamOf.get(name)!), buffer);
      }
    } finally {
      closeSync(fd);
    }
    for (const t of group) weightMap[t.name] = names[s]!;
    totalBytes += dataLength;
  });

  const json = (name: string, value: unknown) =>
    writeFileSync(join(tmp, name), JSON.stringify(value, null, 2) + '\n');
  if (shards.length > 1) {
    const sorted = Object.fromEntries(
      Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : 1)),
    );
    json('model.safetensors.index.json', {
      metadata: { total_size: totalBytes },
      weight_map: sorted,
    });
  }
  json('config.json', config);
  json('generation_config.json', {
    bos_token_id: 1,
    eos_token_id: [2, tokenIds.endOfUtteranceId],
    pad_token_id: 0,
    bad_words_ids: [[tokenIds.fakeTokenId], [tokenIds.imageTokenId]],
  });
  // idefics2-8b's image processor (splitting on by default; requests may turn it off).
  for (const [name, value] of Object.entries(processorConfigFiles(DEFAULT_IMAGE_PROCESSOR_CONFIG)))
    json(name, value);
  const tokenizerDir = tinyTokenizerDir();
  for (const name of readdirSync(tokenizerDir)) {
    if (!name.endsWith('.json')) continue;
    if (name === 'tokenizer.json') {
      const tokenizer = JSON.parse(readFileSync(join(tokenizerDir, name), 'utf8')) as TokenizerJson;
      writeFileSync(
        join(tmp, name),
        JSON.stringify(paddedTokenizer(tokenizer, parsed.text.vocabSize)),
      );
    } else copyFileSync(join(tokenizerDir, name), join(tmp, name));
  }
  const { chat_template: chatTemplate } = JSON.parse(
    readFileSync(join(tokenizerDir, 'tokenizer_config.json'), 'utf8'),
  ) as { chat_template?: string };
  if (chatTemplate) json('chat_template.json', { chat_template: chatTemplate });

  const marker: BenchMarker = {
    format: BENCH_MARKER_FORMAT,
    version: RANDOM_GPTQ_FORMAT_VERSION,
    shape,
    bits,
    groupSize,
    seed,
    ...(float ? { float } : {}),
    totalBytes,
    files: names,
    tensors: tensors.length,
  };
  json(BENCH_MARKER_FILE, marker);
  removeOwnDir(out);
  renameSync(tmp, out);
  return { ...marker, dir: out, ms: performance.now() - started };
}
