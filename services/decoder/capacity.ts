// What the decoder's KV memory needs, checked at start (docs/decoder-engine.md, "Checked at
// start"): a context the model cannot attend over, or KV that cannot fit, is a configuration
// error with the numbers in it, not an allocation failure or a failed step later.
//
// The runner here (ort-runner.ts) keeps the KV in host memory whatever the execution
// provider, so host memory is what it must fit in; a runner keeping it on a GPU would check
// the device's memory instead.
import { constants } from 'node:buffer';
import { totalmem } from 'node:os';
import type { Checkpoint, ExecutionProvider } from '../model/index.js';
import { ConfigError } from '../runtime/index.js';
import { BLOCK_TOKENS } from './model-runner.js';

export interface KvSettings {
  maxRunning: number;
  maxContext: number;
  /** Most prompt tokens in one step (LOUPE_DECODER_MAX_PREFILL_TOKENS): the largest chunk. */
  maxPrefillTokens: number;
  prefixCacheBytes: number;
  executionProvider: ExecutionProvider;
}

export interface KvPlan {
  /** Element type of the KV cache, as the text graph is built (loadTextModel). */
  cacheType: 'float32' | 'float16';
  /** Keys and values of every layer for one token. */
  bytesPerToken: number;
  /** The slots: maxRunning × maxContext tokens. */
  slotBytes: number;
  prefixCacheBlocks: number;
  prefixCacheBytes: number;
  /**
   * What the largest step adds while it runs (activationBytes): 0 on CUDA, where the
   * activations are in device memory.
   */
  activationBytes: number;
}

/** Where the machine's memory ends: the container's limit when there is one. */
export interface MemoryLimit {
  bytes: number;
  what: string;
}

export function hostMemoryLimit(): MemoryLimit {
  const physical = totalmem();
  const constrained = process.constrainedMemory?.() ?? 0;
  return constrained > 0 && constrained < physical
    ? { bytes: constrained, what: "the container's memory limit" }
    : { bytes: physical, what: 'the physical memory' };
}

/** The KV memory `settings` need for the text model of `checkpoint`. */
export function planKv(checkpoint: Checkpoint, settings: KvSettings): KvPlan {
  const t = checkpoint.config.text;
  // As loadTextModel builds the graph: a float checkpoint computes (and caches) in its own
  // dtype; a quantized one in float16 on CUDA, float32 on CPU.
  const cacheType = checkpoint.quantization
    ? settings.executionProvider === 'cuda'
      ? 'float16'
      : 'float32'
    : checkpoint.dtype === 'F16'
      ? 'float16'
      : 'float32';
  const bytesPerToken =
    t.numHiddenLayers * 2 * t.numKeyValueHeads * t.headDim * (cacheType === 'float16' ? 2 : 4);
  const blockBytes = BLOCK_TOKENS * bytesPerToken;
  const prefixCacheBlocks = Math.floor(settings.prefixCacheBytes / blockBytes);
  return {
    cacheType,
    bytesPerToken,
    slotBytes: settings.maxRunning * settings.maxContext * bytesPerToken,
    prefixCacheBlocks,
    prefixCacheBytes: prefixCacheBlocks * blockBytes,
    activationBytes:
      settings.executionProvider === 'cpu' ? activationBytes(checkpoint, settings) : 0,
  };
}

/**
 * An upper estimate of the host memory the largest step adds while it runs on CPU
 * (docs/decoder-engine.md, "Checked at start"), float32 throughout: the larger of
 *   - a prompt chunk of S = LOUPE_DECODER_MAX_PREFILL_TOKENS tokens at the end of a context of
 *     C = LOUPE_DECODER_MAX_CONTEXT: GroupQueryAttention's scores, heads × S × C (measured up to
 *     about twice that at the peak), and the chunk's linear activations,
 *     S × (3 × intermediate + 6 × hidden);
 *   - a decode step of every slot (LOUPE_DECODER_MAX_RUNNING rows) with the matmul attention,
 *     whose scores over the views (at most C) are materialised about three times, and the
 *     rows' logits, taken twice (the graph's and the binding's copy).
 * Checked against measured peaks in capacity.test.ts.
 */
function activationBytes(checkpoint: Checkpoint, settings: KvSettings): number {
  const t = checkpoint.config.text;
  const chunk = Math.min(settings.maxPrefillTokens, settings.maxContext);
  const prefill =
    2 * t.numAttentionHeads * chunk * settings.maxContext +
    chunk * (3 * t.intermediateSize + 6 * t.hiddenSize);
  const decode =
    3 * t.numAttentionHeads * settings.maxRunning * settings.maxContext +
    2 * settings.maxRunning * t.vocabSize;
  return 4 * Math.max(prefill, decode);
}

/** Bytes of the text model's weights as stored (what loading them takes, roughly). */
function textWeightBytes(checkpoint: Checkpoint): number {
  let bytes = 0;
  for (const [name, location] of checkpoint.tensors) {
    if (name.startsWith('model.text_model.') || name.startsWith('lm_head.')) {
      bytes += location.byteLength;
    }
  }
  return bytes;
}

const gib = (bytes: number) =>
  bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/**
 * Checks `settings` against the model and the machine; throws ConfigError naming the
 * variables and the numbers. Returns what the KV takes.
 */
export function checkKvCapacity(
  checkpoint: Checkpoint,
  settings: KvSettings,
  memory: MemoryLimit = hostMemoryLimit(),
): KvPlan {
  const t = checkpoint.config.text;
  if (settings.maxContext > t.maxPositionEmbeddings) {
    throw new ConfigError(
      `LOUPE_DECODER_MAX_CONTEXT is ${settings.maxContext} tokens, past the model's ${t.maxPositionEmbeddings} positions (max_position_embeddings in ${checkpoint.dir}/config.json): the text model has no rotary position beyond them; set it to ${t.maxPositionEmbeddings} or less`,
    );
  }
  const plan = planKv(checkpoint, settings);
  const weights = textWeightBytes(checkpoint);
  const total = plan.slotBytes + plan.prefixCacheBytes + weights + plan.activationBytes;
  if (total > memory.bytes) {
    throw new ConfigError(
      `the decoder needs ${gib(total)} and ${memory.what} is ${gib(memory.bytes)}: KV slots ${gib(plan.slotBytes)} (LOUPE_DECODER_MAX_RUNNING ${settings.maxRunning} × LOUPE_DECODER_MAX_CONTEXT ${settings.maxContext} tokens × ${plan.bytesPerToken} bytes of ${plan.cacheType} KV per token), prefix cache ${gib(plan.prefixCacheBytes)} (LOUPE_DECODER_PREFIX_CACHE_BYTES), text weights ${gib(weights)}, the largest step's activations ${gib(plan.activationBytes)} (LOUPE_DECODER_MAX_PREFILL_TOKENS ${settings.maxPrefillTokens} against the context, or every slot decoding); lower LOUPE_DECODER_MAX_RUNNING, LOUPE_DECODER_MAX_CONTEXT, LOUPE_DECODER_PREFIX_CACHE_BYTES or LOUPE_DECODER_MAX_PREFILL_TOKENS`,
    );
  }
  // One buffer per layer and kind holds every slot (and one every prefix block): each must be
  // a valid typed array.
  const perToken = t.numKeyValueHeads * t.headDim;
  const slotElements = settings.maxRunning * settings.maxContext * perToken;
  const blockElements = plan.prefixCacheBlocks * BLOCK_TOKENS * perToken;
  const limit = constants.MAX_LENGTH;
  if (slotElements > limit) {
    throw new ConfigError(
      `LOUPE_DECODER_MAX_RUNNING ${settings.maxRunning} × LOUPE_DECODER_MAX_CONTEXT ${settings.maxContext} tokens need KV buffers of ${slotElements} elements per layer, over this runtime's ${limit}; lower either`,
    );
  }
  if (blockElements > limit) {
    throw new ConfigError(
      `LOUPE_DECODER_PREFIX_CACHE_BYTES ${settings.prefixCacheBytes} needs prefix-cache buffers of ${blockElements} elements per layer, over this runtime's ${limit}; lower it`,
    );
  }
  return plan;
}
