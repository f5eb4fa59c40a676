// The decoder engine loop (docs/decoder-engine.md): the scheduler plans a step (prompt chunks
// of several sequences beside every decoding sequence's next token, within the token and time
// budgets), the engine assembles it for the model runner (tokens, image rows, which
// prefix-cache blocks to load and to save), the runner runs it, and the engine samples every
// sampled row and reports the tokens. It owns each sequence's sampling state, the prefix
// cache's bookkeeping and the step-time budget's estimates; the KV memory belongs to the
// runner. It lives in the engine thread (engine-worker.ts), one step at a time.
import { float16ToFloat32 } from '../model/index.js';
import { BlockKeys } from './block-keys.js';
import { SlotKvCache } from './kv-cache.js';
import {
  BLOCK_TOKENS,
  type BlockCopy,
  type DecodeRow,
  type ModelRunner,
  type PrefillChunk,
  type RunnerStep,
} from './model-runner.js';
import { PrefixCache } from './prefix-cache.js';
import type { EngineRequest, TokenEvent } from './protocol.js';
import { Rng, sample } from './sampler.js';
import { Scheduler, stepKind, type ChunkPlan, type StepKind, type StepPlan } from './scheduler.js';
import { StepTimeBudget } from './step-budget.js';
import { applyMask, type Constraint } from './grammar/constraint.js';

export interface EngineOptions {
  maxWaiting: number;
  /** Most prompt tokens per step, all chunks together. */
  maxPrefillTokens: number;
  /**
   * The longest a step with decode rows should take, ms (LOUPE_DECODER_MAX_STEP_MS): prompt
   * chunks beside decode rows are cut to fit (step-budget.ts). 0: no time budget.
   */
  maxStepMs?: number;
  eosTokenIds: readonly number[];
  /**
   * Token sequences never generated (generation_config.json's `bad_words_ids`): a sequence's
   * last token is banned wherever the tokens before it were just generated (one-token
   * sequences: everywhere). Applied after logit_bias, so no bias brings one back.
   */
  badWordsIds?: readonly (readonly number[])[];
  /** The clock, ms (tests run the engine on simulated time); default performance.now. */
  now?: () => number;
}

interface SequenceState {
  request: EngineRequest;
  /** Prompt, then generated tokens: what block keys hash. */
  tokens: number[];
  keys: BlockKeys;
  /** The prompt's image rows as float32 [rows, hidden], until its prefill is done. */
  imageRows: Float32Array | undefined;
  /** Leading blocks the prefix cache holds or is saving (none of them is saved again). */
  cachedBlocks: number;
  rng: Rng;
  prompt: Set<number>;
  output: Map<number, number>;
  generated: number;
  lastToken: number;
  /** Its first chunk was planned (the prefix cache was asked) and its prompt is not done. */
  prefilling: boolean;
  arrived: number;
  prefillStarted: number | undefined;
  firstToken: number | undefined;
  /** The grammar the answer follows (response_format), and its mask's bits. */
  constraint: Constraint | undefined;
  maskBits: Int32Array | undefined;
}

export interface StepReport {
  kind: StepKind;
  /** Sequences in the run: prompt chunks and decode rows. */
  batch: number;
  /** Tokens fed to the model: prompt tokens and decode rows. */
  tokens: number;
  /** Prompt tokens and decode rows apart. */
  prefillTokens: number;
  decodeRows: number;
  /** The whole step, ms, and its parts: the runner's run and the sampling (the rest is bookkeeping). */
  ms: number;
  runMs: number;
  sampleMs: number;
  events: TokenEvent[];
  /** Prompt tokens looked up in the prefix cache, and those it held. */
  prefixQueries: number;
  prefixHits: number;
}

export class Engine {
  readonly kv: SlotKvCache;
  readonly scheduler: Scheduler;
  readonly prefixCache: PrefixCache;
  /** The step-time budget's estimates; undefined without a time budget. */
  readonly budget: StepTimeBudget | undefined;
  readonly #states = new Map<string, SequenceState>();
  /** Blocks the plan being made loads (pinned for it), by sequence. */
  #matched = new Map<string, number[]>();
  #prefixQueries = 0;
  #prefixHits = 0;
  readonly #now: () => number;

  constructor(
    private readonly runner: ModelRunner,
    private readonly options: EngineOptions,
  ) {
    this.#now = options.now ?? (() => performance.now());
    this.kv = new SlotKvCache(runner.kv.slots, runner.kv.context);
    this.prefixCache = new PrefixCache(runner.kv.cacheBlocks);
    const budget = options.maxStepMs ? new StepTimeBudget(options.maxStepMs) : undefined;
    this.budget = budget;
    this.scheduler = new Scheduler(this.kv, {
      maxPrefillTokens: options.maxPrefillTokens,
      maxWaiting: options.maxWaiting,
      ...(budget ? { prefillBudget: (rows: number) => budget.prefillTokens(rows) } : {}),
      ...(this.prefixCache.enabled
        ? { prefix: { cachedPrefix: (id: string, limit: number) => this.#cachedPrefix(id, limit) } }
        : {}),
    });
  }

  #banBadWords(state: SequenceState, logits: Float32Array): void {
    for (const seq of this.options.badWordsIds ?? []) {
      const last = seq[seq.length - 1]!;
      if (last >= logits.length) continue;
      const before = seq.length - 1;
      const tokens = state.tokens;
      let matches = tokens.length >= before;
      for (let i = 0; matches && i < before; i++)
        matches = tokens[tokens.length - before + i] === seq[i];
      if (matches) logits[last] = -Infinity;
    }
  }

  /** Whether `token` ends `state`'s sequence (the model's EOS, or the request's stop ids). */
  #ends(state: SequenceState, token: number): boolean {
    return this.options.eosTokenIds.includes(token) || state.request.stopTokenIds.includes(token);
  }

  get vocabSize(): number {
    return this.runner.vocab;
  }

  get eosTokenIds(): readonly number[] {
    return this.options.eosTokenIds;
  }

  get load() {
    return {
      waiting: this.scheduler.waiting,
      running: this.scheduler.running,
      kvCacheUsage: this.kv.usage,
    };
  }

  /**
   * Queues a request (throws QueueFullError when the queue is full); `constraint` is its
   * compiled response_format, owned by the engine from here (disposed when it ends).
   */
  add(request: EngineRequest, constraint?: Constraint): void {
    this.scheduler.addRequest({
      id: request.id,
      promptTokens: request.promptIds.length,
      maxNewTokens: request.maxNewTokens,
      stopTokenIds: new Set([...this.options.eosTokenIds, ...request.stopTokenIds]),
    });
    const tokens = [...request.promptIds];
    this.#states.set(request.id, {
      request,
      tokens,
      keys: new BlockKeys(tokens, tokens.length, request.images, this.runner.imageTokenId),
      imageRows: undefined,
      cachedBlocks: 0,
      rng: new Rng(request.seed),
      prompt: new Set(request.promptIds),
      output: new Map(),
      generated: 0,
      lastToken: -1,
      prefilling: false,
      arrived: this.#now(),
      prefillStarted: undefined,
      firstToken: undefined,
      constraint,
      maskBits: constraint ? new Int32Array(constraint.words) : undefined,
    });
  }

  abort(id: string): boolean {
    this.#states.get(id)?.constraint?.dispose();
    this.#states.delete(id);
    return this.scheduler.abort(id);
  }

  /** Aborts every sequence (after a failed run); returns their ids. */
  abortAll(): string[] {
    const ids = [...this.#states.keys()];
    for (const id of ids) this.abort(id);
    return ids;
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork;
  }

  /** Runs one step; null when there was nothing to run. */
  async step(): Promise<StepReport | null> {
    this.#matched = new Map();
    const plan = this.scheduler.schedule();
    const matched = this.#matched;
    this.#matched = new Map();
    if (plan === null) {
      for (const blocks of matched.values()) this.prefixCache.unpin(blocks);
      return null;
    }
    const started = this.#now();
    // Sampled rows, in the runner's order: the chunks that end a prompt, then the decode rows.
    const rows = [
      ...plan.prefill.filter((c) => c.last).map((c) => c.id),
      ...plan.decode.map((r) => r.id),
    ];
    /** Blocks this step saves into: cached once it succeeds, free again if it fails. */
    const saved: number[] = [];
    const saving = new Set<SequenceState>();
    let output: Awaited<ReturnType<ModelRunner['run']>>;
    let runMs: number;
    try {
      const step = this.#assemble(plan, matched, saved, saving, rows);
      const runStarted = this.#now();
      output = await this.runner.run(step);
      runMs = this.#now() - runStarted;
    } catch (error) {
      this.prefixCache.discard(saved);
      throw error;
    } finally {
      for (const blocks of matched.values()) this.prefixCache.unpin(blocks);
    }
    this.prefixCache.commit(saved);
    for (const state of saving) this.prefixCache.touch(state.keys.keys(state.cachedBlocks));

    const sampleStarted = this.#now();
    const sampled = new Map<string, number>();
    const details = new Map<string, { logprob: number; top: TokenEvent['top'] }>();
    // The grammar's masks first (xgrammar's mask call is async), then one pass of sampling.
    const done = new Set<string>();
    for (const id of rows) {
      const state = this.#states.get(id);
      if (!state?.constraint) continue;
      if (!state.constraint.isDone) await state.constraint.mask(state.maskBits!);
      // A complete answer ends: the grammar allows only the end of the sequence now.
      if (state.constraint.isDone) done.add(id);
    }
    rows.forEach((id, b) => {
      const state = this.#states.get(id);
      if (!state) return; // aborted during the run
      const r = state.request;
      if (done.has(id)) {
        sampled.set(id, this.options.eosTokenIds[0]!);
        details.set(id, { logprob: 0, top: [] });
        return;
      }
      if (output.tokens) {
        // A greedy step (#plainGreedy) whose runner chose the tokens itself.
        sampled.set(id, output.tokens[b]!);
        details.set(id, { logprob: 0, top: [] });
        return;
      }
      const logits = output.logits[b]!;
      if (r.logitBias) {
        const { ids, bias } = r.logitBias;
        for (let i = 0; i < ids.length; i++) logits[ids[i]!]! += bias[i]!;
      }
      this.#banBadWords(state, logits);
      if (state.constraint) applyMask(logits, 0, logits.length, state.maskBits!);
      const s = sample(
        output.logits[b]!,
        r.sampling,
        { prompt: state.prompt, output: state.output },
        state.rng,
        { logprobs: r.logprobs, topLogprobs: r.topLogprobs },
      );
      sampled.set(id, s.id);
      details.set(id, { logprob: s.logprob, top: s.top });
      // The grammar follows the answer; a token that ends the sequence is not part of it.
      if (state.constraint && !this.#ends(state, s.id)) state.constraint.accept(s.id);
    });
    const now = this.#now();
    const sampleMs = now - sampleStarted;
    const events = this.scheduler.update(plan, sampled).map((e) => {
      const state = this.#states.get(e.id)!;
      state.output.set(e.token, (state.output.get(e.token) ?? 0) + 1);
      state.tokens.push(e.token);
      state.lastToken = e.token;
      state.firstToken ??= now;
      const event: TokenEvent = {
        id: e.id,
        token: e.token,
        index: state.generated++,
        ...details.get(e.id)!,
      };
      if (e.finished) {
        event.finished = e.finished;
        event.timings = {
          queue: (state.prefillStarted! - state.arrived) / 1000,
          prefill: (state.firstToken - state.prefillStarted!) / 1000,
          decode: (now - state.firstToken) / 1000,
        };
        state.constraint?.dispose();
        this.#states.delete(e.id);
      }
      return event;
    });
    const prefillTokens = plan.prefill.reduce((n, c) => n + c.length, 0);
    const decodeRows = plan.decode.length;
    const ms = this.#now() - started;
    this.budget?.observe({
      rows: decodeRows,
      tokens: prefillTokens,
      stepMs: ms,
      runMs,
      ...(output.timings ? { timings: output.timings } : {}),
    });
    const report: StepReport = {
      kind: stepKind(plan),
      batch: plan.prefill.length + decodeRows,
      tokens: prefillTokens + decodeRows,
      prefillTokens,
      decodeRows,
      ms,
      runMs,
      sampleMs,
      events,
      prefixQueries: this.#prefixQueries,
      prefixHits: this.#prefixHits,
    };
    this.#prefixQueries = 0;
    this.#prefixHits = 0;
    return report;
  }

  /**
   * The scheduler's question when it plans a sequence's first chunk: how much of its prompt
   * is cached. The blocks found stay pinned until the step that loads them has run. Null
   * (ask again next step) when the first block it misses is one that a sequence started
   * before it is computing: the two share a prefix that is not cached yet, and waiting for
   * it beats computing it twice.
   */
  #cachedPrefix(id: string, limit: number): number | null {
    const state = this.#states.get(id);
    if (!state) return 0;
    const matchable = Math.floor(limit / BLOCK_TOKENS);
    const blocks = this.prefixCache.match(state.keys.keys(matchable));
    if (blocks.length < matchable && this.#computedByAnother(state, blocks.length)) {
      this.prefixCache.unpin(blocks);
      return null;
    }
    this.#matched.set(id, blocks);
    state.cachedBlocks = blocks.length;
    state.prefilling = true;
    this.#prefixQueries += state.request.promptIds.length;
    this.#prefixHits += blocks.length * BLOCK_TOKENS;
    return blocks.length * BLOCK_TOKENS;
  }

  /** Whether another started, still prefilling sequence will compute `state`'s block k. */
  #computedByAnother(state: SequenceState, k: number): boolean {
    const end = (k + 1) * BLOCK_TOKENS;
    for (const other of this.#states.values()) {
      if (other === state || !other.prefilling || other.cachedBlocks > k) continue;
      if (other.request.promptIds.length < end) continue;
      if (other.keys.key(k) === state.keys.key(k)) return true;
    }
    return false;
  }

  /**
   * The runner's form of `plan` (`sampled`: its sampled rows' sequences, in order); adds the
   * blocks it saves into to `saved`, and the sequences saving to `saving`.
   */
  #assemble(
    plan: StepPlan,
    matched: ReadonlyMap<string, number[]>,
    saved: number[],
    saving: Set<SequenceState>,
    sampled: readonly string[],
  ): RunnerStep {
    const loads: BlockCopy[] = [];
    const saves: BlockCopy[] = [];
    const prefill = plan.prefill.map((chunk) =>
      this.#chunk(chunk, matched, loads, saves, saved, saving),
    );
    const decode = plan.decode.map((row): DecodeRow => {
      const state = this.#states.get(row.id)!;
      // This step writes the KV of position `row.position`.
      saves.push(...this.#saves(state, row.slot, row.position + 1, saved, saving));
      return { slot: row.slot, position: row.position, token: state.lastToken };
    });
    // Past the longest live sequence and everything this step writes, nothing is read again.
    let span = this.kv.longest;
    for (const c of plan.prefill) span = Math.max(span, c.start + c.length);
    for (const r of plan.decode) span = Math.max(span, r.position + 1);
    const greedy =
      sampled.length > 0 && sampled.every((id) => this.#plainGreedy(this.#states.get(id)!));
    return { loads, prefill, decode, saves, span, greedy };
  }

  /**
   * Whether `state`'s next token is the argmax of the raw logits, which a runner may then
   * compute where the logits are (RunnerStep.greedy): temperature 0 and nothing that changes
   * the logits or reads them besides.
   */
  #plainGreedy(state: SequenceState): boolean {
    const r = state.request;
    const p = r.sampling;
    return (
      p.temperature === 0 &&
      p.repetitionPenalty === 1 &&
      p.presencePenalty === 0 &&
      p.frequencyPenalty === 0 &&
      !r.logitBias &&
      !r.logprobs &&
      r.topLogprobs === 0 &&
      !state.constraint &&
      !this.options.badWordsIds?.length
    );
  }

  /** One prompt chunk, with the loads of its prefix hit and the saves of the blocks it fills. */
  #chunk(
    plan: ChunkPlan,
    matched: ReadonlyMap<string, number[]>,
    loads: BlockCopy[],
    saves: BlockCopy[],
    saved: number[],
    saving: Set<SequenceState>,
  ): PrefillChunk {
    const state = this.#states.get(plan.id)!;
    state.prefillStarted ??= this.#now();
    state.imageRows ??= imageRowsFloat32(state.request);
    const hit = matched.get(plan.id);
    if ((hit?.length ?? 0) * BLOCK_TOKENS !== plan.cached) {
      throw new Error(
        `prefix blocks matched for ${plan.id} do not cover its ${plan.cached} cached tokens`,
      );
    }
    hit?.forEach((block, k) => loads.push({ block, slot: plan.slot, position: k * BLOCK_TOKENS }));
    const end = plan.start + plan.length;
    const chunk: PrefillChunk = {
      slot: plan.slot,
      start: plan.start,
      tokens: state.request.promptIds.slice(plan.start, end),
      imageRows: this.#chunkImageRows(state, plan.start, end),
      sample: plan.last,
    };
    saves.push(...this.#saves(state, plan.slot, end, saved, saving));
    if (plan.last) {
      state.imageRows = undefined;
      state.prefilling = false;
    }
    return chunk;
  }

  /** The image rows of prompt positions start .. end - 1 (a chunk may cut an image's run). */
  #chunkImageRows(state: SequenceState, start: number, end: number): Float32Array {
    const { promptIds } = state.request;
    const image = this.runner.imageTokenId;
    let first = 0;
    for (let p = 0; p < start; p++) if (promptIds[p] === image) first++;
    let rows = 0;
    for (let p = start; p < end; p++) if (promptIds[p] === image) rows++;
    const { hidden } = this.runner;
    return state.imageRows!.subarray(first * hidden, (first + rows) * hidden);
  }

  /**
   * Saves for the blocks of `state` that are full once positions 0 .. known - 1 hold KV and
   * that the prefix cache does not hold yet.
   */
  #saves(
    state: SequenceState,
    slot: number,
    known: number,
    saved: number[],
    saving: Set<SequenceState>,
  ): BlockCopy[] {
    if (!this.prefixCache.enabled) return [];
    const full = Math.floor(known / BLOCK_TOKENS);
    if (full > state.cachedBlocks) saving.add(state);
    const copies: BlockCopy[] = [];
    for (let k = state.cachedBlocks; k < full; k++) {
      const block = this.prefixCache.reserve(state.keys.key(k));
      // No room (every block pinned or being saved): the rest of this chain would not be
      // reachable without this block anyway.
      if (block === null) break;
      if (block === 'cached') continue;
      copies.push({ block, slot, position: k * BLOCK_TOKENS });
      saved.push(block);
    }
    state.cachedBlocks = Math.max(state.cachedBlocks, full);
    return copies;
  }
}

/** A request's image rows as float32 (float16 ones widened exactly). */
function imageRowsFloat32(r: EngineRequest): Float32Array {
  const bytes = r.imageRows;
  return r.imageDtype === 'float32'
    ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
    : Float32Array.from(
        new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2),
        (bits) => float16ToFloat32(bits),
      );
}
