// The decoder's scheduler: a pure state machine over plain data (no gRPC, no timers, no ONNX
// Runtime). The engine calls schedule() for the next step, runs it, samples, and reports the
// sampled tokens with update(), which returns what happened to each sequence.
import { QueueFullError } from '../runtime/queue-full.js';
import type { SlotKvCache } from './kv-cache.js';
import type { FinishReason, StepKind, TokenFinishReason } from './protocol.js';

export type { StepKind } from './protocol.js';

/** Ordered: every status from FinishedStop on is final. */
export enum SequenceStatus {
  Waiting,
  Prefilling,
  Decoding,
  FinishedStop,
  FinishedLength,
  FinishedAborted,
}

export const isFinished = (status: SequenceStatus) => status >= SequenceStatus.FinishedStop;

export const FINISH_REASON: Partial<Record<SequenceStatus, FinishReason>> = {
  [SequenceStatus.FinishedStop]: 'stop',
  [SequenceStatus.FinishedLength]: 'length',
  [SequenceStatus.FinishedAborted]: 'cancelled',
};

export interface SequenceSpec {
  id: string;
  /** Prompt length, tokens. */
  promptTokens: number;
  /** Most tokens to generate. */
  maxNewTokens: number;
  /** Token ids that end the sequence when sampled (EOS and the request's stop ids). */
  stopTokenIds: ReadonlySet<number>;
}

interface Sequence extends SequenceSpec {
  status: SequenceStatus;
  slot: number;
  /** Prompt tokens already in the cache. */
  prefilled: number;
  generated: number;
  /** Arrival order (first come, first served). */
  order: number;
  /** Whether the prefix cache was asked about it (once, when its first chunk is planned). */
  looked: boolean;
}

/** Prompt tokens of one sequence in a step. Positions and lengths are in tokens. */
export interface ChunkPlan {
  id: string;
  slot: number;
  /** Cache position of the chunk's first token (prompt tokens already prefilled). */
  start: number;
  /**
   * Tokens before `start` that the prefix cache holds and this step loads into the slot (on
   * a sequence's first chunk only; 0 otherwise).
   */
  cached: number;
  /** Tokens in this chunk. */
  length: number;
  /** Whether the chunk ends the prompt: then its last logits are sampled. */
  last: boolean;
}

/** One token of one decoding sequence in a step. */
export interface DecodeRowPlan {
  id: string;
  slot: number;
  /** Cache position the fed token is written to (the sequence's length before it). */
  position: number;
}

/**
 * One step: prompt chunks of several sequences (earliest arrived first) and one decode row
 * for every decoding sequence (by slot), run together (docs/decoder-engine.md, "The loop").
 */
export interface StepPlan {
  prefill: ChunkPlan[];
  decode: DecodeRowPlan[];
}

export const stepKind = (plan: StepPlan): StepKind =>
  plan.prefill.length === 0 ? 'decode' : plan.decode.length === 0 ? 'prefill' : 'mixed';

export interface StepEvent {
  id: string;
  /** The token sampled for this sequence in this step. */
  token: number;
  /** Set when the sequence ended with this token. */
  finished?: TokenFinishReason;
}

/** The prefix cache, as the scheduler sees it. */
export interface PrefixLookup {
  /**
   * Leading prompt tokens of `id` whose KV the cache holds, reserved for the step about to be
   * planned: at most `limit` (the prompt's length - 1: its last token is always computed, for
   * its logits). Null: not now — a sequence started before it is computing the blocks it
   * would find (a shared prefix), so it starts in a later step and finds them cached.
   */
  cachedPrefix(id: string, limit: number): number | null;
}

/**
 * The least prompt tokens a step with decode rows carries while prompts wait, whatever the
 * time budget says: so that prompts advance even when the decode rows alone take the budget.
 */
export const MIN_PREFILL_TOKENS = 16;

export interface SchedulerOptions {
  /** Most prompt tokens in one step, all chunks together (the per-step token budget). */
  maxPrefillTokens: number;
  /**
   * The time budget (docs/decoder-engine.md, "The loop"): the most prompt tokens a step may
   * carry beside `rows` decode rows without taking longer than LOUPE_DECODER_MAX_STEP_MS.
   * Asked only when sequences are decoding (nobody waits on a step without decode rows);
   * none: only maxPrefillTokens bounds a step.
   */
  prefillBudget?: (rows: number) => number;
  /** Most sequences waiting for a free slot; addRequest refuses more (0: only when a slot is free). */
  maxWaiting: number;
  /** Asked once per sequence, when its first chunk is planned; none: nothing is cached. */
  prefix?: PrefixLookup;
}

// Also from here: the engine thread (engine-worker.ts) tells a full queue apart by it.
export { QueueFullError };

export class Scheduler {
  readonly #sequences = new Map<string, Sequence>();
  readonly #waiting: Sequence[] = [];
  #arrivals = 0;

  constructor(
    private readonly kv: SlotKvCache,
    private readonly options: SchedulerOptions,
  ) {}

  get waiting(): number {
    return this.#waiting.length;
  }

  /** Sequences holding a slot (prefilling or decoding). */
  get running(): number {
    return this.#sequences.size - this.#waiting.length;
  }

  get hasWork(): boolean {
    return this.#sequences.size > 0;
  }

  status(id: string): SequenceStatus | undefined {
    return this.#sequences.get(id)?.status;
  }

  addRequest(spec: SequenceSpec): void {
    if (this.#sequences.has(spec.id)) throw new Error(`sequence ${spec.id} already exists`);
    if (spec.promptTokens < 1) throw new RangeError('a prompt needs at least one token');
    if (spec.promptTokens + spec.maxNewTokens > this.kv.context) {
      throw new RangeError(
        `prompt (${spec.promptTokens}) + max new tokens (${spec.maxNewTokens}) exceed the context of ${this.kv.context}`,
      );
    }
    // Those that will wait: the queue beyond the free slots (the first ones get a slot).
    const waitingForSlot = Math.max(0, this.#waiting.length - (this.kv.slots - this.kv.usedSlots));
    if (
      waitingForSlot + 1 > this.options.maxWaiting &&
      this.#waiting.length + 1 > this.kv.slots - this.kv.usedSlots
    ) {
      throw new QueueFullError(
        `decoder queue is full: ${waitingForSlot} requests waiting for a slot, limit ${this.options.maxWaiting}`,
      );
    }
    const sequence: Sequence = {
      ...spec,
      status: SequenceStatus.Waiting,
      slot: -1,
      prefilled: 0,
      generated: 0,
      order: this.#arrivals++,
      looked: false,
    };
    this.#sequences.set(spec.id, sequence);
    this.#waiting.push(sequence);
  }

  /** Ends a sequence now, freeing its slot; false when it is unknown or already ended. */
  abort(id: string): boolean {
    const sequence = this.#sequences.get(id);
    if (!sequence) return false;
    if (sequence.status === SequenceStatus.Waiting) {
      this.#waiting.splice(this.#waiting.indexOf(sequence), 1);
    }
    this.#end(sequence, SequenceStatus.FinishedAborted);
    return true;
  }

  /**
   * The next step, or null when there is nothing to run.
   *
   * 1. Admit waiting sequences in arrival order while a slot is free (each reserves a whole
   *    slot, so an admitted sequence always finishes; the rest wait).
   * 2. Every decoding sequence gets a decode row.
   * 3. Prompt tokens are added, earliest-arrived prefilling sequence first, while the step's
   *    prompt budget lasts: maxPrefillTokens, and with decode rows in the step also what
   *    prefillBudget allows beside them (at least MIN_PREFILL_TOKENS), so a long prompt is cut
   *    into chunks that never hold the running streams for longer than the time budget, and
   *    several short prompts share one step.
   * 4. A sequence's first chunk starts after what the prefix cache holds of its prompt. It is
   *    asked then, not at admission, so a prompt admitted beside another with the same prefix
   *    finds what that one's prefill has cached by then (the cache defers it until then).
   * 5. A chunk never leaves exactly one prompt token for later: a final chunk of one token
   *    runs the model's one-token path, whose logits differ in the last bits from the same
   *    token computed inside a longer chunk, and the tokens a prompt gets must not depend on
   *    where timing cut it.
   */
  schedule(): StepPlan | null {
    while (this.#waiting.length > 0) {
      const next = this.#waiting[0]!;
      const slot = this.kv.allocate(next.promptTokens + next.maxNewTokens);
      if (slot === null) break;
      this.#waiting.shift();
      next.slot = slot;
      next.status = SequenceStatus.Prefilling;
    }
    const prefilling: Sequence[] = [];
    const decoding: Sequence[] = [];
    for (const s of this.#sequences.values()) {
      if (s.status === SequenceStatus.Prefilling) prefilling.push(s);
      else if (s.status === SequenceStatus.Decoding) decoding.push(s);
    }
    if (prefilling.length === 0 && decoding.length === 0) return null;
    prefilling.sort((a, b) => a.order - b.order);
    decoding.sort((a, b) => a.slot - b.slot);

    let budget = this.options.maxPrefillTokens;
    if (decoding.length > 0 && this.options.prefillBudget && prefilling.length > 0) {
      const allowed = Math.floor(this.options.prefillBudget(decoding.length));
      budget = Math.min(budget, Math.max(MIN_PREFILL_TOKENS, allowed));
    }
    const prefill: ChunkPlan[] = [];
    for (const s of prefilling) {
      if (budget <= 0) break;
      let cached = 0;
      if (!s.looked) {
        const { prefix } = this.options;
        const answer = prefix ? prefix.cachedPrefix(s.id, s.promptTokens - 1) : 0;
        if (answer === null) continue;
        if (!Number.isSafeInteger(answer) || answer < 0 || answer >= s.promptTokens) {
          throw new RangeError(
            `prefix cache answered ${answer} tokens for a ${s.promptTokens}-token prompt`,
          );
        }
        s.looked = true;
        cached = answer;
        s.prefilled = cached;
      }
      const remaining = s.promptTokens - s.prefilled;
      let length = Math.min(budget, remaining);
      if (remaining - length === 1) length = length > 1 ? length - 1 : 2;
      prefill.push({
        id: s.id,
        slot: s.slot,
        start: s.prefilled,
        cached,
        length,
        last: length === remaining,
      });
      budget -= length;
    }
    if (prefill.length === 0 && decoding.length === 0) return null;
    return {
      prefill,
      decode: decoding.map((s) => ({ id: s.id, slot: s.slot, position: this.kv.length(s.slot) })),
    };
  }

  /**
   * Records a finished step: `sampled` maps each sequence that was sampled (the last chunk
   * of a prompt, every decode row) to its token. Sequences aborted meanwhile are skipped.
   * Returns one event per sampled sequence still alive: finished prompts first, then the
   * decode rows.
   */
  update(plan: StepPlan, sampled: ReadonlyMap<string, number>): StepEvent[] {
    const events: StepEvent[] = [];
    for (const chunk of plan.prefill) {
      const s = this.#sequences.get(chunk.id);
      if (!s || s.status !== SequenceStatus.Prefilling) continue;
      s.prefilled = chunk.start + chunk.length;
      this.kv.setLength(s.slot, s.prefilled);
      if (!chunk.last) continue;
      s.status = SequenceStatus.Decoding;
      events.push(this.#emit(s, sampled.get(s.id)));
    }
    for (const row of plan.decode) {
      const s = this.#sequences.get(row.id);
      if (!s || s.status !== SequenceStatus.Decoding) continue;
      this.kv.setLength(s.slot, row.position + 1);
      events.push(this.#emit(s, sampled.get(s.id)));
    }
    return events;
  }

  #emit(s: Sequence, token: number | undefined): StepEvent {
    if (token === undefined) throw new Error(`no token sampled for sequence ${s.id}`);
    s.generated++;
    const event: StepEvent = { id: s.id, token };
    if (s.stopTokenIds.has(token)) event.finished = 'stop';
    else if (s.generated >= s.maxNewTokens) event.finished = 'length';
    if (event.finished) {
      this.#end(
        s,
        event.finished === 'stop' ? SequenceStatus.FinishedStop : SequenceStatus.FinishedLength,
      );
    }
    return event;
  }

  #end(s: Sequence, status: SequenceStatus): void {
    if (s.slot >= 0) this.kv.release(s.slot);
    s.slot = -1;
    s.status = status;
    this.#sequences.delete(s.id);
  }
}
