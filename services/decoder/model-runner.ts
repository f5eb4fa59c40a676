// The seam between the engine loop and the model (docs/decoder-engine.md): the engine decides
// what runs (admission, chunks, which KV goes where, sampling); a ModelRunner owns the KV
// memory and runs one step of it. Everything here is in slots, blocks and token positions —
// never in tensors — so a runner may keep its KV anywhere: in host buffers (OrtModelRunner,
// ort-runner.ts), or on a GPU where it never leaves the device.
//
// KV memory, as the runner holds it:
//   - slots 0 .. slots-1, each the KV of one sequence, positions 0 .. context-1. The engine
//     gives a slot to a sequence at admission and takes it back at its end; positions below
//     what the engine has run hold that sequence's keys and values, the rest is garbage the
//     runner never attends to.
//   - prefix-cache blocks 0 .. cacheBlocks-1, each the KV of BLOCK_TOKENS consecutive
//     positions, copied out of a slot (a save) and later into another slot (a load). Which
//     block holds what is the engine's business (prefix-cache.ts); the runner only copies.

/** Tokens per prefix-cache block: the granularity of prefix reuse. */
export const BLOCK_TOKENS = 16;

export interface KvShape {
  /** Sequences whose KV is held at once. */
  slots: number;
  /** Positions per slot: the longest sequence, prompt and generated tokens together. */
  context: number;
  /** Prefix-cache blocks held beside the slots (0: no prefix cache). */
  cacheBlocks: number;
}

/** A block's KV and a slot's positions position .. position + BLOCK_TOKENS - 1. */
export interface BlockCopy {
  block: number;
  slot: number;
  /** A multiple of BLOCK_TOKENS. */
  position: number;
}

/** Prompt tokens of one sequence, fed together. */
export interface PrefillChunk {
  slot: number;
  /** Position of the chunk's first token: every position before it holds KV already. */
  start: number;
  tokens: ArrayLike<number>;
  /**
   * Rows that replace the chunk's <image> tokens, in order, [image tokens in the chunk,
   * hidden] float32 (a chunk may start or end inside an image's run of tokens).
   */
  imageRows: Float32Array;
  /** Whether the chunk's last token is sampled (the prompt's last chunk): return its logits. */
  sample: boolean;
}

/** One token of one decoding sequence. */
export interface DecodeRow {
  slot: number;
  /** Where its KV goes: the sequence's length before this step. */
  position: number;
  token: number;
}

/**
 * One step, done in this order: loads, then the model over prefill and decode, then saves.
 * The prompt chunks (of several sequences) and the decode rows are the runner's to batch as
 * it can: in one run, or in several (docs/decoder-engine.md, "The seam").
 */
export interface RunnerStep {
  /** Prefix-cache blocks into slots (prefix hits), before anything reads those positions. */
  loads: readonly BlockCopy[];
  prefill: readonly PrefillChunk[];
  decode: readonly DecodeRow[];
  /** Slot positions into prefix-cache blocks, after this step's KV is written. */
  saves: readonly BlockCopy[];
  /**
   * An upper bound of the KV any slot holds once this step is done: every live sequence's
   * length and every position this step writes or copies are below it, and positions at or
   * past it are garbage in every slot. A runner may size what it hands the model by it
   * rather than by `context` (ort-runner.ts: ONNX Runtime's attention clears and copies as
   * many positions as it is handed).
   */
  span: number;
  /**
   * Every sampled row takes the most likely token of its raw logits (greedy, with nothing
   * that changes or reads the logits: no penalty, bias, banned word, grammar or logprobs).
   * A runner may then return `tokens` instead of `logits`, choosing where the logits are
   * (in the graph, on the device) and sparing the copy and the scan.
   */
  greedy: boolean;
}

export interface RunnerOutput {
  /**
   * One row of logits [vocab] per sampled position: the prefill chunks with `sample`, in
   * order, then every decode row, in order. Valid until the next run (a runner may reuse
   * the memory; the engine samples every row before it runs again).
   */
  logits: Float32Array[];
  /**
   * Only for a `greedy` step, instead of `logits`: the most likely token of each sampled row,
   * in the same order (the lowest id on a tie, as the engine's own argmax).
   */
  tokens?: Int32Array;
  /**
   * How long the prompt chunks and the decode rows took, ms, for a runner that runs them
   * apart: the engine's step-time budget learns each part's cost from it (step-budget.ts).
   * A runner that runs both in one pass leaves it out.
   */
  timings?: { prefillMs: number; decodeMs: number };
}

export interface ModelRunner {
  readonly vocab: number;
  readonly hidden: number;
  /** The token every <image> position of a prompt holds. */
  readonly imageTokenId: number;
  readonly kv: KvShape;
  /** Runs one step; rejects when the model cannot (the engine fails the step's sequences). */
  run(step: RunnerStep): Promise<RunnerOutput>;
  release(): Promise<void>;
}
