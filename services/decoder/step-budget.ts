// The step-time budget (docs/decoder-engine.md, "The loop"): how many prompt tokens a step may
// carry beside its decode rows without holding the running streams for longer than
// LOUPE_DECODER_MAX_STEP_MS. It learns what steps cost on this machine and this model from
// the steps it sees, so the same setting means the same stall on a fast or a slow machine.
//
// The model is deliberately plain — a step costs
//   overhead + decode(rows) + prompt tokens × per-token
// — with each part an exponentially weighted average of recent observations:
//   - decode(rows): the decode part of recent steps, scaled up (never down) by rows over the
//     rows it was measured at: a step with one more stream is estimated dearer, and one with
//     fewer streams no cheaper than measured, which errs on the side of the budget;
//   - per-token: the prefill part of recent steps over their prompt tokens (the ratio of the
//     two averages, so that a small chunk's fixed cost — a model run reads every weight once
//     — weighs as little as its tokens). A prompt's later chunks attend over more positions
//     and cost a little more per token; the averages follow them within a few steps;
//   - overhead: the step's time outside the runner (sampling, bookkeeping).
// A runner that times its prefill and decode parts apart (RunnerOutput.timings) gives each
// part directly; otherwise a step of one kind is all that kind, and a mixed step's time past
// the decode estimate is the prompt's.

/** Weight of the newest observation: about the last five steps matter. */
const ALPHA = 0.3;

export interface StepObservation {
  /** Decode rows and prompt tokens in the step. */
  rows: number;
  tokens: number;
  /** The whole step, and the runner's share of it, ms. */
  stepMs: number;
  runMs: number;
  /** The runner's own split of runMs, when it has one. */
  timings?: { prefillMs: number; decodeMs: number };
}

function average(old: number | undefined, value: number): number {
  return old === undefined ? value : old + ALPHA * (value - old);
}

export class StepTimeBudget {
  #decodeMs: number | undefined;
  #decodeRows: number | undefined;
  #prefillMs: number | undefined;
  #prefillTokens: number | undefined;
  #overheadMs: number | undefined;

  /** `maxStepMs` > 0: the longest a step with decode rows should take, ms. */
  constructor(readonly maxStepMs: number) {
    if (!(maxStepMs > 0)) throw new RangeError(`maxStepMs must be > 0, got ${maxStepMs}`);
  }

  /**
   * Prompt tokens that fit in a step beside `rows` decode rows (may be 0 or less when the
   * rows alone take the budget; the scheduler still gives prompts MIN_PREFILL_TOKENS).
   * Before any prompt was timed: 0, so the first mixed step carries the minimum and is timed.
   */
  prefillTokens(rows: number): number {
    if (this.#prefillMs === undefined) return 0;
    const tokenMs = Math.max(this.#prefillMs / this.#prefillTokens!, 1e-6);
    const left = this.maxStepMs - (this.#overheadMs ?? 0) - this.decodeMs(rows);
    return Math.floor(left / tokenMs);
  }

  /** The estimated decode part of a step of `rows` rows, ms (0 before any was timed). */
  decodeMs(rows: number): number {
    if (this.#decodeMs === undefined || rows <= 0) return 0;
    return this.#decodeMs * Math.max(1, rows / this.#decodeRows!);
  }

  /** Learns from one finished step. */
  observe({ rows, tokens, stepMs, runMs, timings }: StepObservation): void {
    if (rows === 0 && tokens === 0) return;
    this.#overheadMs = average(this.#overheadMs, Math.max(0, stepMs - runMs));
    let decodeMs: number | undefined;
    let prefillMs: number | undefined;
    if (timings) {
      decodeMs = rows > 0 ? timings.decodeMs : undefined;
      prefillMs = tokens > 0 ? timings.prefillMs : undefined;
    } else if (tokens === 0) {
      decodeMs = runMs;
    } else if (rows === 0) {
      prefillMs = runMs;
    } else if (this.#decodeMs !== undefined) {
      prefillMs = Math.max(0, runMs - this.decodeMs(rows));
    }
    if (decodeMs !== undefined) {
      this.#decodeMs = average(this.#decodeMs, decodeMs);
      this.#decodeRows = average(this.#decodeRows, rows);
    }
    if (prefillMs !== undefined) {
      this.#prefillMs = average(this.#prefillMs, prefillMs);
      this.#prefillTokens = average(this.#prefillTokens, tokens);
    }
  }
}
