// ScriptedRunner: a deterministic ModelRunner for engine tests, with no model. Its "KV" at a
// position is a 32-bit hash of the KV before it, the position and what was fed there (a token
// id, or an image row's bits), so the logits it returns depend on everything before, as a
// model's do: a wrong or missing block, row or position changes every later token. It checks
// what a real runner would silently get wrong (a chunk starting past the KV written, image
// rows that do not match the chunk's image tokens) and records every step for assertions.
// With a `cost` and a `clock`, a run takes simulated time: the engine's step-time budget
// (step-budget.ts) can then be tested on exact timings rather than on a noisy machine.
import {
  BLOCK_TOKENS,
  type KvShape,
  type ModelRunner,
  type RunnerOutput,
  type RunnerStep,
} from './model-runner.js';

/** Simulated time, ms: what the engine reads as its clock in budget tests. */
export class FakeClock {
  ms = 0;
  readonly now = (): number => this.ms;
}

/** What a run costs in simulated ms: each part that runs costs its base plus its size. */
export interface ScriptedCost {
  /** Per run of prompt chunks (0 when a step has none), and per prompt token. */
  prefillBaseMs: number;
  tokenMs: number;
  /** Per run of decode rows (0 when a step has none), and per row. */
  decodeBaseMs: number;
  rowMs: number;
}

export interface ScriptedRunnerOptions {
  /** With `clock`: every run advances it by its simulated cost and reports its timings. */
  cost?: ScriptedCost;
  clock?: FakeClock;
  slots?: number;
  context?: number;
  cacheBlocks?: number;
  vocab?: number;
  hidden?: number;
  imageTokenId?: number;
  /** A greedy step (RunnerStep.greedy) returns each row's argmax as `tokens`, no logits. */
  greedyTokens?: boolean;
}

function mix(a: number, b: number): number {
  let h = Math.imul(a ^ b, 0x9e3779b1);
  h ^= h >>> 15;
  h = Math.imul(h, 0x85ebca77);
  h ^= h >>> 13;
  return h >>> 0;
}

/** The first index of the largest value. */
function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** A fingerprint of one image row's float32 bits. */
function rowPrint(row: Float32Array): number {
  const bits = new Uint32Array(row.buffer, row.byteOffset, row.length);
  let h = 0x1234567;
  for (const b of bits) h = mix(h, b);
  return h;
}

export class ScriptedRunner implements ModelRunner {
  readonly vocab: number;
  readonly hidden: number;
  readonly imageTokenId: number;
  readonly kv: KvShape;
  /** Every step run, in order. */
  readonly steps: RunnerStep[] = [];
  /** Prompt tokens computed (fed in prefill chunks), all steps together. */
  prefilled = 0;
  /** The next run fails with this error (once). */
  failNext: Error | undefined;
  /** While set, runs wait for it before returning (a step in flight). */
  gate: Promise<void> | undefined;

  readonly #slots: Uint32Array[];
  /** Positions of each slot holding KV written by this runner, from 0. */
  readonly #valid: number[];
  readonly #blocks: Uint32Array[];

  readonly #cost: ScriptedCost | undefined;
  readonly #clock: FakeClock | undefined;
  readonly #greedyTokens: boolean;

  constructor({
    cost,
    clock,
    slots = 4,
    context = 256,
    cacheBlocks = 0,
    vocab = 50,
    hidden = 4,
    imageTokenId = 49,
    greedyTokens = false,
  }: ScriptedRunnerOptions = {}) {
    this.#greedyTokens = greedyTokens;
    this.#cost = cost;
    this.#clock = clock;
    this.kv = { slots, context, cacheBlocks };
    this.vocab = vocab;
    this.hidden = hidden;
    this.imageTokenId = imageTokenId;
    this.#slots = Array.from({ length: slots }, () => new Uint32Array(context));
    this.#valid = new Array<number>(slots).fill(0);
    this.#blocks = Array.from({ length: cacheBlocks }, () => new Uint32Array(BLOCK_TOKENS));
  }

  async run(step: RunnerStep): Promise<RunnerOutput> {
    this.steps.push(step);
    if (this.failNext) {
      const error = this.failNext;
      this.failNext = undefined;
      throw error;
    }
    const written = [
      ...step.prefill.map((c) => c.start + c.tokens.length),
      ...step.decode.map((r) => r.position + 1),
      ...step.loads.map((l) => l.position + BLOCK_TOKENS),
    ];
    this.#check(
      written.every((end) => end <= step.span),
      `span ${step.span} below a position the step writes`,
    );
    for (const { block, slot, position } of step.loads) {
      this.#check(position % BLOCK_TOKENS === 0, `load at position ${position}`);
      if (position === 0) this.#valid[slot] = 0;
      this.#check(position <= this.#valid[slot]!, `load at ${position} past slot ${slot}'s KV`);
      this.#slots[slot]!.set(this.#blocks[block]!, position);
      this.#valid[slot] = Math.max(this.#valid[slot]!, position + BLOCK_TOKENS);
    }
    const logits: Float32Array[] = [];
    for (const chunk of step.prefill) {
      if (chunk.start === 0) this.#valid[chunk.slot] = 0;
      this.#check(
        chunk.start <= this.#valid[chunk.slot]!,
        `chunk at ${chunk.start} past slot ${chunk.slot}'s KV (${this.#valid[chunk.slot]})`,
      );
      let image = 0;
      for (let i = 0; i < chunk.tokens.length; i++) {
        const token = chunk.tokens[i]!;
        let input = token;
        if (token === this.imageTokenId) {
          const row = chunk.imageRows.subarray(image * this.hidden, (image + 1) * this.hidden);
          this.#check(row.length === this.hidden, 'fewer image rows than image tokens');
          input = rowPrint(row) | 0x80000000;
          image++;
        }
        this.#write(chunk.slot, chunk.start + i, input);
      }
      this.#check(image * this.hidden === chunk.imageRows.length, 'more image rows than tokens');
      this.prefilled += chunk.tokens.length;
      if (chunk.sample)
        logits.push(this.#logits(chunk.slot, chunk.start + chunk.tokens.length - 1));
    }
    for (const row of step.decode) {
      this.#check(row.position <= this.#valid[row.slot]!, `decode at ${row.position} past the KV`);
      this.#write(row.slot, row.position, row.token);
      logits.push(this.#logits(row.slot, row.position));
    }
    for (const { block, slot, position } of step.saves) {
      this.#check(position + BLOCK_TOKENS <= this.#valid[slot]!, `save of unwritten ${position}`);
      this.#blocks[block]!.set(this.#slots[slot]!.subarray(position, position + BLOCK_TOKENS));
    }
    if (this.gate) await this.gate;
    const out: RunnerOutput =
      step.greedy && this.#greedyTokens
        ? { logits: [], tokens: Int32Array.from(logits, argmax) }
        : { logits };
    if (!this.#cost || !this.#clock) return out;
    const c = this.#cost;
    const tokens = step.prefill.reduce((n, chunk) => n + chunk.tokens.length, 0);
    const prefillMs = tokens > 0 ? c.prefillBaseMs + c.tokenMs * tokens : 0;
    const decodeMs = step.decode.length > 0 ? c.decodeBaseMs + c.rowMs * step.decode.length : 0;
    this.#clock.ms += prefillMs + decodeMs;
    return { ...out, timings: { prefillMs, decodeMs } };
  }

  async release(): Promise<void> {}

  /** Holds the runs from now until the returned function is called. */
  hold(): () => void {
    let open!: () => void;
    this.gate = new Promise<void>((resolve) => (open = resolve));
    return () => {
      this.gate = undefined;
      open();
    };
  }

  #write(slot: number, position: number, input: number): void {
    const kv = this.#slots[slot]!;
    const before = position === 0 ? 0xc0ffee : kv[position - 1]!;
    kv[position] = mix(mix(before, input), position);
    this.#valid[slot] = position + 1;
  }

  /**
   * Logits in [-4, 4) drawn from the KV at `position`: a clear argmax, and a spread to sample.
   * Never the image token (as a model never writes one), so answers can be fed back as prompts.
   */
  #logits(slot: number, position: number): Float32Array {
    const state = this.#slots[slot]![position]!;
    return Float32Array.from({ length: this.vocab }, (_, i) =>
      i === this.imageTokenId ? -Infinity : (mix(state, i) / 2 ** 32) * 8 - 4,
    );
  }

  #check(ok: boolean, what: string): void {
    if (!ok) throw new Error(`ScriptedRunner: ${what}`);
  }
}
