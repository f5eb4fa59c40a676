// What the gRPC thread and the engine thread say to each other (engine-client.ts and
// engine-worker.ts both import this module and neither imports the other), and the engine's
// vocabulary for requests, tokens and why a sequence ended. See docs/decoder-engine.md.
import type { ExecutionProvider } from '../model/index.js';
import type { StopWorker } from '../runtime/index.js';
import type { SamplingParams } from './sampler.js';
import type { ResponseFormatSpec } from './grammar/constraint.js';
import type { EngineLogitBias } from './grammar/request-format.js';

/**
 * Why a sequence ended: one vocabulary from the scheduler through the engine's events to the
 * metrics (`finished_reason`) and the wire (server.ts maps each to a FinishReason of
 * decoder.proto). `cancelled` is never in a token event: a cancelled call gets no more events.
 */
export type FinishReason = 'stop' | 'length' | 'cancelled';

/** The reasons a sampled token can end its sequence with. */
export type TokenFinishReason = Exclude<FinishReason, 'cancelled'>;

/** One image of a request, as the engine needs it for prefix-cache keys. */
export interface EngineImage {
  /** Its embedding rows (= its <image> tokens in the prompt, in order). */
  rows: number;
  /**
   * Identifies the rows: equal keys mean equal rows (request-validation.ts derives it from the
   * caller's content hash or from the rows' bytes, with their dtype).
   */
  key: string;
}

/** A request as the engine takes it (checked by request-validation.ts before). */
export interface EngineRequest {
  id: string;
  promptIds: number[];
  /** Image embedding rows in prompt order, [rows, hidden], raw little-endian bytes. */
  imageRows: Uint8Array;
  imageDtype: 'float16' | 'float32';
  /** The images whose rows `imageRows` holds, in order. */
  images: EngineImage[];
  sampling: SamplingParams;
  /** Seed of the request's generator. */
  seed: bigint;
  stopTokenIds: number[];
  maxNewTokens: number;
  logprobs: boolean;
  topLogprobs: number;
  /** Added to these tokens' logits before sampling (OpenAI's logit_bias). */
  logitBias?: EngineLogitBias | undefined;
  /** Constrains the answer (docs/structured-output.md); compiled by the engine thread. */
  responseFormat?: ResponseFormatSpec | undefined;
}

export interface TokenEvent {
  id: string;
  token: number;
  /** 0-based among generated tokens. */
  index: number;
  logprob: number;
  top: Array<{ id: number; logprob: number }>;
  finished?: TokenFinishReason;
  /** With `finished`: seconds waiting, prefilling (to the first token) and decoding. */
  timings?: { queue: number; prefill: number; decode: number };
}

export interface EngineLoad {
  waiting: number;
  running: number;
  /** Share of KV slots reserved, [0, 1]. */
  kvCacheUsage: number;
}

export interface EngineInfo {
  vocabSize: number;
  hiddenSize: number;
  imageTokenId: number;
  eosTokenIds: number[];
  /** `float32`, `float16`, `gptq-4bit-g128-sym`, ... */
  weightFormat: string;
  /** Bytes of the text model's weights as loaded (quantized ones as stored). */
  weightBytes: number;
  /** A quantized checkpoint's packed weights file and whether it was reused. */
  packedWeights?: { path: string; reused: boolean };
}

/** What the engine thread needs to start (its workerData). */
export interface EngineSetup {
  modelDir: string;
  executionProvider: ExecutionProvider;
  intraOpThreads: number;
  /** For GPTQ checkpoints: int8 activations, and where the packed weights go. */
  quantized: { int8Activations: boolean; weightCacheDir?: string };
  engine: {
    /** Sequences decoded at once (KV slots). */
    maxRunning: number;
    /** Tokens per sequence, prompt + generated. */
    maxContext: number;
    maxWaiting: number;
    /** Most prompt tokens per step. */
    maxPrefillTokens: number;
    /** Longest a step with decode rows should take, ms; 0: no time budget. */
    maxStepMs: number;
    /** Prefix-cache blocks (capacity.ts sizes them from LOUPE_DECODER_PREFIX_CACHE_BYTES). */
    prefixCacheBlocks: number;
  };
  /** Testing only: steps writing KV at or past this position fail (fault-injection.ts). */
  faultAtPosition?: number;
}

/**
 * What a step ran (the `step` label of the step metrics): prompt chunks only, decode rows
 * only, or both (docs/decoder-engine.md, "The loop").
 */
export type StepKind = 'prefill' | 'decode' | 'mixed';

/** One step as the gRPC thread sees it (metrics). */
export interface StepStats {
  kind: StepKind;
  /** Sequences in the step: prompt chunks and decode rows. */
  batch: number;
  /** Tokens fed to the model: prompt tokens and decode rows. */
  tokens: number;
  ms: number;
  /** Prompt tokens looked up in the prefix cache in this step, and those found (vLLM's count). */
  prefixQueries: number;
  prefixHits: number;
}

/** The engine thread's answer to refusing a request. */
export type RejectReason = 'queue_full' | 'invalid';

export type EngineCommand =
  { kind: 'add'; request: EngineRequest } | { kind: 'abort'; id: string } | StopWorker;

export type EngineMessage =
  | { kind: 'ready'; info: EngineInfo }
  | { kind: 'failed'; message: string }
  | { kind: 'accepted'; id: string; load: EngineLoad }
  | { kind: 'rejected'; id: string; reason: RejectReason; message: string }
  | { kind: 'load'; load: EngineLoad }
  | { kind: 'step'; step: StepStats; events: TokenEvent[]; load: EngineLoad }
  | { kind: 'step_failed'; message: string; ids: string[]; load: EngineLoad };
