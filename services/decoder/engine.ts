// The decoder engine: owns the text session, the KV buffers, the scheduler and each
// sequence's sampling state, and runs the loop — schedule a step, run it, sample, report.
// It lives in the engine thread (engine-worker.ts); everything here is synchronous per step.
import type * as ort from 'onnxruntime-node';
import {
  cacheNames,
  float16ToFloat32,
  makeTensor,
  readOutput,
  spliceImageRows,
  type TextModel,
} from '../model/index.js';
import { SlotKvCache } from './kv-cache.js';
import { Rng, sample, type SamplingParams } from './sampler.js';
import { Scheduler, type StepEvent, type StepPlan } from './scheduler.js';

export interface EngineOptions {
  /** Sequences decoded at once (KV slots). */
  maxRunning: number;
  /** Tokens per sequence, prompt + generated. */
  maxContext: number;
  maxWaiting: number;
  maxPrefillTokens: number;
  eosTokenIds: readonly number[];
}

/** A request as the engine takes it (checked by the service before). */
export interface EngineRequest {
  id: string;
  promptIds: number[];
  /** Image embedding rows in prompt order, [rows, hidden], raw little-endian bytes. */
  imageRows: Uint8Array;
  imageDtype: 'float16' | 'float32';
  sampling: SamplingParams;
  /** Seed of the request's generator. */
  seed: bigint;
  stopTokenIds: number[];
  maxNewTokens: number;
  logprobs: boolean;
  topLogprobs: number;
}

export interface TokenEvent {
  id: string;
  token: number;
  /** 0-based among generated tokens. */
  index: number;
  logprob: number;
  top: Array<{ id: number; logprob: number }>;
  finished?: 'stop' | 'length';
  /** With `finished`: seconds waiting, prefilling (to the first token) and decoding. */
  timings?: { queue: number; prefill: number; decode: number };
}

interface SequenceState {
  request: EngineRequest;
  /** Prompt input embeddings [prompt, hidden] until the prefill is done. */
  promptRows: Float32Array | undefined;
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
}

export class Engine {
  readonly kv: SlotKvCache;
  readonly scheduler: Scheduler;
  readonly #states = new Map<string, SequenceState>();
  /** Per layer: [slots, kv heads, context, head dim] K and V buffers. */
  readonly #buffers: Array<{ key: Float32Array | Uint16Array; value: Float32Array | Uint16Array }>;
  /** Cache tensors over the first n slots, by n (decode) and per slot (prefill). */
  readonly #prefixViews = new Map<number, ort.Tensor[]>();
  readonly #slotViews = new Map<number, ort.Tensor[]>();
  readonly #slotElements: number;

  constructor(
    private readonly model: TextModel,
    private readonly options: EngineOptions,
  ) {
    const { layers, kvHeads, headDim } = model.graph;
    this.kv = new SlotKvCache(options.maxRunning, options.maxContext);
    this.scheduler = new Scheduler(this.kv, {
      maxPrefillTokens: options.maxPrefillTokens,
      maxWaiting: options.maxWaiting,
    });
    this.#slotElements = kvHeads * options.maxContext * headDim;
    const elements = options.maxRunning * this.#slotElements;
    const make = () =>
      model.graph.cacheType === 'float16' ? new Uint16Array(elements) : new Float32Array(elements);
    this.#buffers = Array.from({ length: layers }, () => ({ key: make(), value: make() }));
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
    this.#states.set(request.id, {
      request,
      promptRows: undefined,
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
    const plan = this.scheduler.schedule();
    if (plan === null) return null;
    const started = performance.now();
    const { logits, rows } = await this.#run(plan);
    const sampled = new Map<string, number>();
    const details = new Map<string, { logprob: number; top: TokenEvent['top'] }>();
    const { vocab } = this.model.graph;
    rows.forEach((id, b) => {
      const state = this.#states.get(id);
      if (!state) return;
      const r = state.request;
      const s = sample(
        logits.subarray(b * vocab, (b + 1) * vocab),
        r.sampling,
        { prompt: state.prompt, output: state.output },
        state.rng,
        { logprobs: r.logprobs, topLogprobs: r.topLogprobs },
      );
      sampled.set(id, s.id);
      details.set(id, { logprob: s.logprob, top: s.top });
    });
    const now = performance.now();
    const events = this.scheduler.update(plan, sampled).map((e: StepEvent) => {
      const state = this.#states.get(e.id)!;
      state.output.set(e.token, (state.output.get(e.token) ?? 0) + 1);
      state.lastToken = e.token;
      state.firstToken ??= now;
      const event: TokenEvent = {
        id: e.id,
        token: e.token,
        index: state.generated++,
        ...details.get(e.id)!,
      };
      if (e.finished === 'stop' || e.finished === 'length') {
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
    return {
      kind: plan.kind,
      batch: plan.kind === 'prefill' ? 1 : plan.rows.length,
      tokens: plan.kind === 'prefill' ? plan.length : plan.rows.length,
      ms: now - started,
      events,
    };
  }

  /** Runs the graph for `plan`; returns logits [rows, vocab] and the sequence of each row. */
  async #run(plan: StepPlan): Promise<{ logits: Float32Array; rows: string[] }> {
    const { hidden } = this.model.graph;
    const feeds: Record<string, ort.Tensor> = {};
    const fetches: Record<string, ort.Tensor | null> = { logits: null };
    let views: ort.Tensor[];
    let rows: string[];
    /** Where each batch row's new keys go: [slot, first position, tokens]; none for idle rows. */
    let writes: Array<[slot: number, position: number, tokens: number] | undefined>;
    if (plan.kind === 'prefill') {
      const state = this.#states.get(plan.id)!;
      state.prefillStarted ??= performance.now();
      state.promptRows ??= this.#promptRows(state.request);
      const chunk = state.promptRows.subarray(
        plan.start * hidden,
        (plan.start + plan.length) * hidden,
      );
      feeds['inputs_embeds'] = makeTensor('float32', chunk, [1, plan.length, hidden]);
      feeds['seqlens_k'] = makeTensor('int32', Int32Array.of(plan.start + plan.length - 1), [1]);
      feeds['total_sequence_length'] = makeTensor(
        'int32',
        Int32Array.of(plan.start + plan.length),
        [],
      );
      feeds['logit_positions'] = makeTensor(
        'int64',
        BigInt64Array.of(BigInt(plan.length - 1)),
        [1, 1],
      );
      feeds['position_ids'] = makeTensor(
        'int64',
        BigInt64Array.from({ length: plan.length }, (_, i) => BigInt(plan.start + i)),
        [1, plan.length],
      );
      writes = [[plan.slot, plan.start, plan.length]];
      views = this.#slotView(plan.slot);
      rows = plan.last ? [plan.id] : [];
      if (plan.last) state.promptRows = undefined;
    } else {
      const n = plan.slots;
      const embeds = new Float32Array(n * hidden);
      const seqlens = new Int32Array(n);
      // Idle slots in the range run too (their rows are not written back): give them their
      // length (0 when free) as a valid position.
      for (let s = 0; s < n; s++) seqlens[s] = Math.max(0, this.kv.length(s));
      const byRow = new Array<string>(n).fill('');
      for (const row of plan.rows) {
        const state = this.#states.get(row.id)!;
        embeds.set(this.model.embeddings.embed([state.lastToken]), row.slot * hidden);
        seqlens[row.slot] = row.position;
        byRow[row.slot] = row.id;
      }
      let total = 0;
      for (const l of seqlens) total = Math.max(total, l + 1);
      feeds['inputs_embeds'] = makeTensor('float32', embeds, [n, 1, hidden]);
      feeds['seqlens_k'] = makeTensor('int32', seqlens, [n]);
      feeds['total_sequence_length'] = makeTensor('int32', Int32Array.of(total), []);
      feeds['logit_positions'] = makeTensor('int64', new BigInt64Array(n), [n, 1]);
      feeds['position_ids'] = makeTensor('int64', BigInt64Array.from(seqlens, BigInt), [n, 1]);
      views = this.#prefixView(n);
      rows = byRow;
      writes = byRow.map((id, slot) => (id === '' ? undefined : [slot, seqlens[slot]!, 1]));
    }
    // The cache goes in as past only; this step's keys and values come back as new_* rows,
    // written into the cache here (fetching present would copy the whole cache into
    // JavaScript every step: onnxruntime-node 1.30 copies every output it returns).
    const { layers, kvHeads, headDim, cacheType } = this.model.graph;
    for (let l = 0; l < layers; l++) {
      const names = cacheNames(l);
      feeds[names.pastKey] = views[2 * l]!;
      feeds[names.pastValue] = views[2 * l + 1]!;
      fetches[names.newKey] = null;
      fetches[names.newValue] = null;
    }
    const out = await this.model.session.run(feeds, fetches);
    const logits = readOutput(out, 'logits', 'float32').data;
    const { maxContext } = this.options;
    for (let l = 0; l < layers; l++) {
      const names = cacheNames(l);
      for (const [name, buffer] of [
        [names.newKey, this.#buffers[l]!.key],
        [names.newValue, this.#buffers[l]!.value],
      ] as const) {
        const fresh = readOutput(out, name, cacheType).data; // [batch, seq, kv heads · d]
        const seq = fresh.length / (writes.length * kvHeads * headDim);
        writes.forEach((w, b) => {
          if (!w) return;
          const [slot, position, tokens] = w;
          for (let h = 0; h < kvHeads; h++) {
            for (let t = 0; t < tokens; t++) {
              const from = ((b * seq + t) * kvHeads + h) * headDim;
              const to = ((slot * kvHeads + h) * maxContext + position + t) * headDim;
              buffer.set(fresh.subarray(from, from + headDim), to);
            }
          }
        });
      }
    }
    return { logits, rows };
  }

  /** Input embeddings of a prompt, image rows spliced in (their count checked). */
  #promptRows(r: EngineRequest): Float32Array {
    const rows = this.model.embeddings.embed(r.promptIds);
    const image =
      r.imageDtype === 'float32'
        ? new Float32Array(r.imageRows.buffer, r.imageRows.byteOffset, r.imageRows.byteLength / 4)
        : Float32Array.from(
            new Uint16Array(r.imageRows.buffer, r.imageRows.byteOffset, r.imageRows.byteLength / 2),
            (bits) => float16ToFloat32(bits),
          );
    spliceImageRows(rows, r.promptIds, image, {
      imageTokenId: this.model.imageTokenId,
      hidden: this.model.graph.hidden,
    });
    return rows;
  }

  #tensors(from: number, slots: number): ort.Tensor[] {
    const { kvHeads, headDim } = this.model.graph;
    const dims = [slots, kvHeads, this.options.maxContext, headDim];
    const start = from * this.#slotElements;
    const end = (from + slots) * this.#slotElements;
    return this.#buffers.flatMap(({ key, value }) =>
      [key, value].map((buffer) =>
        buffer instanceof Float32Array
          ? makeTensor('float32', buffer.subarray(start, end), dims)
          : makeTensor('float16', buffer.subarray(start, end), dims),
      ),
    );
  }

  #slotView(slot: number): ort.Tensor[] {
    let views = this.#slotViews.get(slot);
    if (!views) this.#slotViews.set(slot, (views = this.#tensors(slot, 1)));
    return views;
  }

  #prefixView(slots: number): ort.Tensor[] {
    let views = this.#prefixViews.get(slots);
    if (!views) this.#prefixViews.set(slots, (views = this.#tensors(0, slots)));
    return views;
  }
}
