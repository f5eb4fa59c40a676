// The ONNX Runtime model runner with the KV cache in host memory (the CPU execution provider's
// runner; see docs/decoder-engine.md for what a GPU runner does instead).
//
// KV memory: per layer, one key and one value buffer, allocated for [slots, kv heads, context,
// head dim] and laid out as [slots, kv heads, stride, head dim] for the current stride (a
// slot is one contiguous region per head), and per layer a key and a value pool of
// prefix-cache blocks [blocks, kv heads, BLOCK_TOKENS, head dim]. A prefill chunk runs over
// its slot's view; a decode step runs slots 0 .. highest decoding slot at once over one view
// of the first slots (idle ones in the range run too, at length 0, and nothing of theirs is
// written back). The graph takes the cache as past only and returns this step's keys and
// values as new_* rows, which are written into the slots here: fetching `present` would copy
// the whole cache into JavaScript every step (onnxruntime-node 1.30 copies every output).
//
// The stride: every view is read to its full length each layer and step, whatever the sequences'
// lengths — by the `matmul` attention this runner uses for decode batches on CPU (runnerAttention:
// it multiplies each slot's whole view and masks what lies past the sequence), and worse by ONNX
// Runtime 1.30's CPU GroupQueryAttention, which given a past it does not share with its present
// first zero-fills a present of [batch, kv heads, past length, head dim] and copies each
// sequence's valid past into it (once per query head). So views as long as the configured context
// (2,048 by default) would cost the whole context every layer and step. The stride follows the
// step's `span` instead — a quarter above it in multiples of 64, up to the context, grown when a
// sequence outgrows it and shrunk (with hysteresis) when the long ones end — and the buffers are
// repacked in place when it changes, which is rare (docs/decoder-engine.md, "A step's host work").
//
// Prefix hits copy a block's rows into the new slot (a load) rather than pointing the slot at
// shared blocks: both attentions read each sequence's past as one contiguous buffer, so a
// block table would mean gathering every sequence's whole context every step.
// docs/decoder-engine.md has the measured costs of both.
import type * as ort from 'onnxruntime-node';
import {
  cacheNames,
  type ExecutionProvider,
  makeTensor,
  readOutput,
  spliceImageRows,
  type TextAttention,
  type TextModel,
  useGroupQuery,
} from '../model/index.js';
import {
  BLOCK_TOKENS,
  type BlockCopy,
  type KvShape,
  type ModelRunner,
  type PrefillChunk,
  type RunnerOutput,
  type RunnerStep,
} from './model-runner.js';

type KvBuffer = Float32Array | Uint16Array;

/** An `adaptive` graph's `group_query` input, either way. */
const GROUP_QUERY = {
  yes: makeTensor('bool', Uint8Array.of(1), []),
  no: makeTensor('bool', Uint8Array.of(0), []),
};

/** The shortest stride: below it, a repack would cost more than the clears it saves. */
const MIN_STRIDE = 64;

/**
 * The text graph's attention for this runner. On CPU `adaptive`: for decode batches of more
 * than a few rows the matmul attention, which reads the slots in place (matmul-attention.ts)
 * where GroupQueryAttention would clear and copy every sequence's past every layer and step;
 * for small decode batches and prompt chunks (one sequence per run) GroupQueryAttention, whose
 * one kernel is cheaper there than the matmul's two dozen small nodes and, over a chunk,
 * attends only the valid past with one copy of the scores (useGroupQuery). On CUDA
 * GroupQueryAttention, whose kernels are the GPU's own (the GPU runner of
 * docs/decoder-engine.md keeps the cache on the device instead).
 */
export function runnerAttention(executionProvider: ExecutionProvider): TextAttention {
  return executionProvider === 'cpu' ? 'adaptive' : 'group-query';
}

/** Bytes of KV one token takes: keys and values of every layer. */
export function kvBytesPerToken(graph: TextModel['graph']): number {
  const bytes = graph.cacheType === 'float16' ? 2 : 4;
  return graph.layers * 2 * graph.kvHeads * graph.headDim * bytes;
}

export interface OrtRunnerOptions {
  /**
   * Views as long as the context always, as before the stride followed the span (the
   * baseline that bench:decoder measures the stride against).
   */
  fullContextViews?: boolean;
  /**
   * Greedy steps fetch the graph's argmax (the default) or, false, the logits as any other
   * step (the baseline bench:decoder measures the graph's argmax against).
   */
  greedyInGraph?: boolean;
}

/** The decode step's small inputs for a batch of n rows, reused from step to step. */
interface DecodeFeeds {
  embeds: Float32Array;
  seqlens: Int32Array;
  positions: BigInt64Array;
  total: Int32Array;
  tensors: Record<string, ort.Tensor>;
}

export class OrtModelRunner implements ModelRunner {
  readonly vocab: number;
  readonly hidden: number;
  readonly imageTokenId: number;
  /** Per layer: the slots' keys and values, then the prefix-cache blocks'. */
  readonly #slots: Array<{ key: KvBuffer; value: KvBuffer }>;
  readonly #blocks: Array<{ key: KvBuffer; value: KvBuffer }>;
  /** Positions per slot and head in the buffers' current layout (see the file comment). */
  #stride: number;
  /** Cache tensors over the first n slots, by n (decode) and per slot (prefill): this stride's. */
  readonly #prefixViews = new Map<number, ort.Tensor[]>();
  readonly #slotViews = new Map<number, ort.Tensor[]>();
  readonly #decodeFeeds = new Map<number, DecodeFeeds>();
  readonly #fullContext: boolean;
  /** Greedy steps fetch `greedy_tokens` (the graph has it, and the options allow it). */
  readonly #hasGreedyTokens: boolean;

  constructor(
    private readonly model: TextModel,
    readonly kv: KvShape,
    { fullContextViews = false, greedyInGraph = true }: OrtRunnerOptions = {},
  ) {
    const { layers, kvHeads, headDim, cacheType, vocab, hidden } = model.graph;
    this.vocab = vocab;
    this.hidden = hidden;
    this.imageTokenId = model.imageTokenId;
    this.#fullContext = fullContextViews;
    this.#hasGreedyTokens = greedyInGraph && model.session.outputNames.includes('greedy_tokens');
    this.#stride = fullContextViews ? kv.context : Math.min(kv.context, MIN_STRIDE);
    const make = (elements: number) =>
      cacheType === 'float16' ? new Uint16Array(elements) : new Float32Array(elements);
    const slotElements = kv.slots * kvHeads * kv.context * headDim;
    const blockElements = kv.cacheBlocks * kvHeads * BLOCK_TOKENS * headDim;
    this.#slots = Array.from({ length: layers }, () => ({
      key: make(slotElements),
      value: make(slotElements),
    }));
    this.#blocks = Array.from({ length: layers }, () => ({
      key: make(blockElements),
      value: make(blockElements),
    }));
  }

  /** Positions per slot in the layout now (the views' past length). */
  get stride(): number {
    return this.#stride;
  }

  async run(step: RunnerStep): Promise<RunnerOutput> {
    this.#restride(step.span);
    for (const load of step.loads) this.#copy(load, 'load');
    // A greedy step fetches the graph's argmax (greedy_tokens) instead of the logits.
    const greedy = step.greedy && this.#hasGreedyTokens;
    const logits: Float32Array[] = [];
    const tokens: number[] = [];
    const prefillStarted = performance.now();
    for (const chunk of step.prefill) {
      const out = await this.#prefill(chunk, greedy);
      if (!chunk.sample) continue;
      if (typeof out === 'number') tokens.push(out);
      else logits.push(out);
    }
    const decodeStarted = performance.now();
    if (step.decode.length > 0) {
      const out = await this.#decode(step, greedy);
      if (out instanceof Int32Array) tokens.push(...out);
      else logits.push(...out);
    }
    const done = performance.now();
    for (const save of step.saves) this.#copy(save, 'save');
    return {
      logits,
      ...(greedy ? { tokens: Int32Array.from(tokens) } : {}),
      timings: { prefillMs: decodeStarted - prefillStarted, decodeMs: done - decodeStarted },
    };
  }

  async release(): Promise<void> {
    await this.model.release();
  }

  /** Runs one chunk over its slot; returns the logits of its last token (greedy: its argmax). */
  async #prefill(chunk: PrefillChunk, greedy: boolean): Promise<Float32Array | number> {
    const { hidden } = this;
    const length = chunk.tokens.length;
    const embeds = this.model.embeddings.embed(chunk.tokens);
    spliceImageRows(embeds, chunk.tokens, chunk.imageRows, {
      imageTokenId: this.imageTokenId,
      hidden,
    });
    const end = chunk.start + length;
    const feeds: Record<string, ort.Tensor> = {
      inputs_embeds: makeTensor('float32', embeds, [1, length, hidden]),
      seqlens_k: makeTensor('int32', Int32Array.of(end - 1), [1]),
      total_sequence_length: makeTensor('int32', Int32Array.of(end), []),
      logit_positions: makeTensor('int64', BigInt64Array.of(BigInt(length - 1)), [1, 1]),
      position_ids: makeTensor(
        'int64',
        BigInt64Array.from({ length }, (_, i) => BigInt(chunk.start + i)),
        [1, length],
      ),
    };
    const out = await this.#runGraph(
      feeds,
      this.#slotView(chunk.slot),
      [[chunk.slot, chunk.start, length]],
      greedy,
    );
    return out instanceof Float32Array ? out.subarray(0, this.vocab) : Number(out[0]);
  }

  /**
   * Runs every decode row at once over slots 0 .. highest; returns logits in row order
   * (greedy: the rows' argmax).
   */
  async #decode(step: RunnerStep, greedy: boolean): Promise<Float32Array[] | Int32Array> {
    const { hidden, vocab } = this;
    let n = 0;
    for (const row of step.decode) n = Math.max(n, row.slot + 1);
    const feeds = this.#decodeFeedsFor(n);
    // Idle slots in the range run at length 0 (the cheapest valid position) on whatever
    // embedding they last had.
    feeds.seqlens.fill(0);
    const writes = new Array<[slot: number, position: number, tokens: number] | undefined>(n).fill(
      undefined,
    );
    for (const row of step.decode) {
      feeds.embeds.set(this.model.embeddings.embed([row.token]), row.slot * hidden);
      feeds.seqlens[row.slot] = row.position;
      writes[row.slot] = [row.slot, row.position, 1];
    }
    let total = 0;
    for (let b = 0; b < n; b++) {
      feeds.positions[b] = BigInt(feeds.seqlens[b]!);
      total = Math.max(total, feeds.seqlens[b]! + 1);
    }
    feeds.total[0] = total;
    const out = await this.#runGraph({ ...feeds.tensors }, this.#prefixView(n), writes, greedy);
    if (out instanceof BigInt64Array) {
      return Int32Array.from(step.decode, (row) => Number(out[row.slot]));
    }
    return step.decode.map((row) => out.subarray(row.slot * vocab, (row.slot + 1) * vocab));
  }

  #decodeFeedsFor(n: number): DecodeFeeds {
    let feeds = this.#decodeFeeds.get(n);
    if (feeds) return feeds;
    const embeds = new Float32Array(n * this.hidden);
    const seqlens = new Int32Array(n);
    const positions = new BigInt64Array(n);
    const total = new Int32Array(1);
    feeds = {
      embeds,
      seqlens,
      positions,
      total,
      // A tensor keeps a reference to its typed array: refilling the array refills the input.
      tensors: {
        inputs_embeds: makeTensor('float32', embeds, [n, 1, this.hidden]),
        seqlens_k: makeTensor('int32', seqlens, [n]),
        total_sequence_length: makeTensor('int32', total, []),
        logit_positions: makeTensor('int64', new BigInt64Array(n), [n, 1]),
        position_ids: makeTensor('int64', positions, [n, 1]),
      },
    };
    this.#decodeFeeds.set(n, feeds);
    return feeds;
  }

  /**
   * Runs the graph with `views` as the past cache, writes each batch row's new keys and values
   * into its slot ([slot, first position, tokens]; none for idle rows) and returns the logits
   * ([batch, keep, vocab]), or with `greedy` their argmax ([batch, keep]).
   */
  async #runGraph(
    feeds: Record<string, ort.Tensor>,
    views: ort.Tensor[],
    writes: ReadonlyArray<readonly [slot: number, position: number, tokens: number] | undefined>,
    greedy: boolean,
  ): Promise<Float32Array | BigInt64Array> {
    const { layers, kvHeads, headDim, cacheType, attention } = this.model.graph;
    if (attention === 'adaptive') {
      const [batch, seq] = feeds['inputs_embeds']!.dims as [number, number];
      feeds['group_query'] = useGroupQuery(batch, seq) ? GROUP_QUERY.yes : GROUP_QUERY.no;
    }
    const fetches: Record<string, ort.Tensor | null> = greedy
      ? { greedy_tokens: null }
      : { logits: null };
    for (let l = 0; l < layers; l++) {
      const names = cacheNames(l);
      feeds[names.pastKey] = views[2 * l]!;
      feeds[names.pastValue] = views[2 * l + 1]!;
      fetches[names.newKey] = null;
      fetches[names.newValue] = null;
    }
    const out = await this.model.session.run(feeds, fetches);
    const stride = this.#stride;
    for (let l = 0; l < layers; l++) {
      const names = cacheNames(l);
      for (const [name, buffer] of [
        [names.newKey, this.#slots[l]!.key],
        [names.newValue, this.#slots[l]!.value],
      ] as const) {
        const fresh = readOutput(out, name, cacheType).data; // [batch, seq, kv heads · d]
        const seq = fresh.length / (writes.length * kvHeads * headDim);
        writes.forEach((w, b) => {
          if (!w) return;
          const [slot, position, tokens] = w;
          for (let h = 0; h < kvHeads; h++) {
            for (let t = 0; t < tokens; t++) {
              const from = ((b * seq + t) * kvHeads + h) * headDim;
              const to = ((slot * kvHeads + h) * stride + position + t) * headDim;
              buffer.set(fresh.subarray(from, from + headDim), to);
            }
          }
        });
      }
    }
    return greedy
      ? readOutput(out, 'greedy_tokens', 'int64').data
      : readOutput(out, 'logits', 'float32').data;
  }

  /**
   * Lays the slots out with the stride `span` calls for: grown to the tier above it when the
   * span outgrows the stride, shrunk to it when that tier is half the stride or less (so a
   * span moving back and forth around an edge does not repack every step). Every slot keeps
   * its first min(old, new) positions per head, which hold all its KV (`span` bounds every
   * live sequence).
   */
  #restride(span: number): void {
    if (this.#fullContext) return;
    const { context } = this.kv;
    if (span > context) throw new RangeError(`span ${span} exceeds the context of ${context}`);
    // A quarter more than the span, in multiples of MIN_STRIDE: a repack every quarter of
    // growth, and views at most about a quarter longer than the longest sequence.
    const tier = (n: number) =>
      Math.min(context, Math.max(MIN_STRIDE, Math.ceil((1.25 * n) / MIN_STRIDE) * MIN_STRIDE));
    const old = this.#stride;
    let next = old;
    if (span > old || tier(span) * 2 <= old) next = tier(span);
    if (next === old) return;
    const { kvHeads, headDim } = this.model.graph;
    const regions = this.kv.slots * kvHeads;
    const keep = Math.min(old, next) * headDim;
    for (const layer of this.#slots) {
      for (const buffer of [layer.key, layer.value]) {
        // Growing moves regions up (last first), shrinking moves them down (first first), so
        // no region is overwritten before it has moved.
        for (let i = 0; i < regions; i++) {
          const r = next > old ? regions - 1 - i : i;
          buffer.copyWithin(r * next * headDim, r * old * headDim, r * old * headDim + keep);
        }
      }
    }
    this.#stride = next;
    this.#prefixViews.clear();
    this.#slotViews.clear();
  }

  /** Copies one block's rows between the pool and a slot, per layer, kind and head. */
  #copy({ block, slot, position }: BlockCopy, direction: 'load' | 'save'): void {
    const { kvHeads, headDim } = this.model.graph;
    const stride = this.#stride;
    const run = BLOCK_TOKENS * headDim;
    this.#slots.forEach((slots, l) => {
      const blocks = this.#blocks[l]!;
      for (const kind of ['key', 'value'] as const) {
        const inSlots = slots[kind];
        const inBlocks = blocks[kind];
        for (let h = 0; h < kvHeads; h++) {
          const s = ((slot * kvHeads + h) * stride + position) * headDim;
          const b = (block * kvHeads + h) * run;
          if (direction === 'load') inSlots.set(inBlocks.subarray(b, b + run), s);
          else inBlocks.set(inSlots.subarray(s, s + run), b);
        }
      }
    });
  }

  #tensors(from: number, slots: number): ort.Tensor[] {
    const { kvHeads, headDim } = this.model.graph;
    const slotElements = kvHeads * this.#stride * headDim;
    const dims = [slots, kvHeads, this.#stride, headDim];
    const start = from * slotElements;
    const end = (from + slots) * slotElements;
    return this.#slots.flatMap(({ key, value }) =>
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
