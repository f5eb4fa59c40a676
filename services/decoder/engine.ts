// The decoder engine loop (docs/decoder-engine.md): the scheduler plans a step, the engine
// assembles it for the model runner (tokens, image rows, which prefix-cache blocks to load
// and to save), the runner runs it, and the engine samples every sampled row and reports the
// tokens. It owns each sequence's sampling state and the prefix cache's bookkeeping; the KV
// memory belongs to the runner. It lives in the engine thread (engine-worker.ts), one step at
// a time.
import { float16ToFloat32 } from '../model/index.js';
import { BlockKeys } from './block-keys.js';
import { SlotKvCache } from './kv-cache.js';
import {
  BLOCK_TOKENS,
  type BlockCopy,
  type ModelRunner,
  type PrefillChunk,
  type RunnerStep,
} from './model-runner.js';
import { PrefixCache } from './prefix-cache.js';
import type { EngineRequest, TokenEvent } from './protocol.js';
import { Rng, sample } from './sampler.js';
import { Scheduler, type StepPlan } from './scheduler.js';

export interface EngineOptions {
  maxWaiting: number;
  maxPrefillTokens: number;
  eosTokenIds: readonly number[];
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
  arrived: number;
  prefillStarted: number | undefined;
  firstToken: number | undefined;
}

export interface StepReport {
  kind: 'prefill' | 'decode';
  /** Sequences in the run (1 for a prefill). */
  batch: number;
  /** Tokens fed to the model. */
  tokens: number;
  ms: number;
  events: TokenEvent[];
  /** Prompt tokens looked up in the prefix cache, and those it held. */
  prefixQueries: number;
  prefixHits: number;
}

export class Engine {
  readonly kv: SlotKvCache;
  readonly scheduler: Scheduler;
  readonly prefixCache: PrefixCache;
  readonly #states = new Map<string, SequenceState>();
  /** Blocks the plan being made loads (pinned for it): [sequence, block ids]. */
  #matched: [string, number[]] | undefined;
  #prefixQueries = 0;
  #prefixHits = 0;

  constructor(
    private readonly runner: ModelRunner,
    private readonly options: EngineOptions,
  ) {
    this.kv = new SlotKvCache(runner.kv.slots, runner.kv.context);
    this.prefixCache = new PrefixCache(runner.kv.cacheBlocks);
    this.scheduler = new Scheduler(this.kv, {
      maxPrefillTokens: options.maxPrefillTokens,
      maxWaiting: options.maxWaiting,
      ...(this.prefixCache.enabled
        ? { prefix: { cachedPrefix: (id: string, limit: number) => this.#cachedPrefix(id, limit) } }
        : {}),
    });
  }

  get load() {
    return {
      waiting: this.scheduler.waiting,
      running: this.scheduler.running,
      kvCacheUsage: this.kv.usage,
    };
  }

  /** Queues a request (throws QueueFullError when the queue is full). */
  add(request: EngineRequest): void {
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
      arrived: performance.now(),
      prefillStarted: undefined,
      firstToken: undefined,
    });
  }

  abort(id: string): boolean {
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
    this.#matched = undefined;
    const plan = this.scheduler.schedule();
    if (plan === null) return null;
    const started = performance.now();
    const matched = this.#matched as [string, number[]] | undefined;
    this.#matched = undefined;
    /** Blocks this step saves into: cached once it succeeds, free again if it fails. */
    const saved: number[] = [];
    const saving = new Set<SequenceState>();
    let logits: Float32Array[];
    try {
      logits = (await this.runner.run(this.#assemble(plan, matched, saved, saving))).logits;
    } catch (error) {
      this.prefixCache.discard(saved);
      throw error;
    } finally {
      if (matched) this.prefixCache.unpin(matched[1]);
    }
    this.prefixCache.commit(saved);
    for (const state of saving) this.prefixCache.touch(state.keys.keys(state.cachedBlocks));

    // Sampled rows, in the runner's order: the prefill's last chunk, or every decode row.
    const rows =
      plan.kind === 'prefill' ? (plan.last ? [plan.id] : []) : plan.rows.map((r) => r.id);
    const sampled = new Map<string, number>();
    const details = new Map<string, { logprob: number; top: TokenEvent['top'] }>();
    rows.forEach((id, b) => {
      const state = this.#states.get(id);
      if (!state) return; // aborted during the run
      const r = state.request;
      const s = sample(
        logits[b]!,
        r.sampling,
        { prompt: state.prompt, output: state.output },
        state.rng,
        { logprobs: r.logprobs, topLogprobs: r.topLogprobs },
      );
      sampled.set(id, s.id);
      details.set(id, { logprob: s.logprob, top: s.top });
    });
    const now = performance.now();
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
        this.#states.delete(e.id);
      }
      return event;
    });
    const report: StepReport = {
      kind: plan.kind,
      batch: plan.kind === 'prefill' ? 1 : plan.rows.length,
      tokens: plan.kind === 'prefill' ? plan.length : plan.rows.length,
      ms: now - started,
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
   * is cached. The blocks found stay pinned until the step that loads them has run.
   */
  #cachedPrefix(id: string, limit: number): number {
    const state = this.#states.get(id);
    if (!state) return 0;
    const blocks = this.prefixCache.match(state.keys.keys(Math.floor(limit / BLOCK_TOKENS)));
    this.#matched = [id, blocks];
    state.cachedBlocks = blocks.length;
    this.#prefixQueries += state.request.promptIds.length;
    this.#prefixHits += blocks.length * BLOCK_TOKENS;
    return blocks.length * BLOCK_TOKENS;
  }

  /**
   * The runner's form of `plan`; adds the blocks it saves into to `saved`, and the sequences
   * saving to `saving`.
   */
  #assemble(
    plan: StepPlan,
    matched: [string, number[]] | undefined,
    saved: number[],
    saving: Set<SequenceState>,
  ): RunnerStep {
    if (plan.kind === 'decode') {
      const saves: BlockCopy[] = [];
      const decode = plan.rows.map((row) => {
        const state = this.#states.get(row.id)!;
        // This step writes the KV of position `row.position`.
        saves.push(...this.#saves(state, row.slot, row.position + 1, saved, saving));
        return { slot: row.slot, position: row.position, token: state.lastToken };
      });
      return { loads: [], prefill: [], decode, saves };
    }
    const state = this.#states.get(plan.id)!;
    state.prefillStarted ??= performance.now();
    state.imageRows ??= imageRowsFloat32(state.request);
    const loads: BlockCopy[] = [];
    if (matched) {
      if (matched[0] !== plan.id || matched[1].length * BLOCK_TOKENS !== plan.cached) {
        throw new Error(`prefix blocks matched for ${matched[0]} but planned for ${plan.id}`);
      }
      matched[1].forEach((block, k) =>
        loads.push({ block, slot: plan.slot, position: k * BLOCK_TOKENS }),
      );
    }
    const end = plan.start + plan.length;
    const chunk: PrefillChunk = {
      slot: plan.slot,
      start: plan.start,
      tokens: state.request.promptIds.slice(plan.start, end),
      imageRows: this.#chunkImageRows(state, plan.start, end),
      sample: plan.last,
    };
    const saves = this.#saves(state, plan.slot, end, saved, saving);
    if (plan.last) state.imageRows = undefined;
    return { loads, prefill: [chunk], decode: [], saves };
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
