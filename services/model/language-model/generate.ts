// A simple in-process greedy loop over the text graph, for one or several sequences decoded
// together: one prefill step (right-padded, each sequence its own length), then one decode
// step per token. The decoder service's engine does the scheduling for real; this is the
// plain reference loop (tests, in-process runs).
//
// The KV cache is one buffer per layer and kind, [batch, kv heads, max length, head dim],
// allocated once and passed both as past input and as preallocated present output, so GQA
// writes each step's keys in place (text-graph.ts). onnxruntime-node 1.30 still hands back a
// copy of every fetched output, which the loop ignores: at batch 8 on the small checkpoint
// that copy is about a third of a decode step, and it goes once the binding returns
// preallocated outputs as they are (done upstream, not yet released).
//
// KV buffer of one layer during decoding (batch 2, lengths 5 and 3 after prefill):
//
//   seq 0: k0 k1 k2 k3 k4 | k5 ...        seqlens_k[0] = 5 at the first decode step
//   seq 1: k0 k1 k2 ·  ·  | k3 ...        seqlens_k[1] = 3: its new key lands at index 3
//          (· = prefill padding, never attended; overwritten as seq 1 grows)
import type * as ort from 'onnxruntime-node';
import type { Checkpoint } from '../checkpoint/index.js';
import { createSession, makeTensor, readOutput, type SessionOptions } from '../onnx/index.js';
import { spliceImageRows, TokenEmbeddings } from './embeddings.js';
import {
  buildTextGraph,
  cacheNames,
  type TextAttention,
  type TextGraph,
  type TextGraphOptions,
  useGroupQuery,
} from './text-graph.js';

export interface TextModel {
  graph: TextGraph;
  session: ort.InferenceSession;
  embeddings: TokenEmbeddings;
  imageTokenId: number;
  release(): Promise<void>;
}

export interface LoadTextModelOptions {
  session?: SessionOptions;
  /**
   * For quantized checkpoints: int8 activations (MatMulNBits accuracy level 4, faster, not
   * equal to the float model) and where the packed weights go. The float type follows the
   * execution provider: float16 on `cuda`, float32 on `cpu`.
   */
  quantized?: { int8Activations?: boolean; weightCacheDir?: string };
  /** The graph's attention (TextGraphOptions.attention); generateGreedy needs `group-query`. */
  attention?: TextAttention;
}

/** Builds the text graph, opens it, and loads the embedding table. */
export async function loadTextModel(
  checkpoint: Checkpoint,
  { session: sessionOptions = {}, quantized = {}, attention }: LoadTextModelOptions = {},
): Promise<TextModel> {
  const graphOptions: TextGraphOptions = {
    quantizedFloatType: sessionOptions.executionProvider === 'cuda' ? 'float16' : 'float32',
    accuracyLevel: quantized.int8Activations ? 4 : 0,
    ...(quantized.weightCacheDir === undefined ? {} : { weightCacheDir: quantized.weightCacheDir }),
    ...(attention === undefined ? {} : { attention }),
  };
  const graph = buildTextGraph(checkpoint, graphOptions);
  const embeddings = TokenEmbeddings.load(checkpoint);
  const session = await createSession(graph.model, sessionOptions);
  return {
    graph,
    session,
    embeddings,
    imageTokenId: checkpoint.config.imageTokenId,
    release: () => session.release(),
  };
}

export interface Prompt {
  /** Token ids, BOS included. */
  ids: readonly number[];
  /** Image embedding rows [image tokens, hidden], spliced into the `<image>` positions. */
  imageRows?: Float32Array;
}

export interface GenerateOptions {
  /** Tokens to generate at most per sequence. */
  maxNewTokens: number;
  /** Generation stops for a sequence after it emits one of these (the id is kept). */
  eosTokenIds: readonly number[];
}

export interface GeneratedSequence {
  promptIds: number[];
  generatedIds: number[];
  /** Logits [vocab] at the last prompt position. */
  prefillLogits: Float32Array;
}

export interface GenerateResult {
  sequences: GeneratedSequence[];
  /** Wall time of the prefill step (ms) and of all decode steps together (ms). */
  prefillMs: number;
  decodeMs: number;
  decodeSteps: number;
}

function argmax(x: Float32Array, from: number, length: number): number {
  let best = 0;
  for (let i = 1; i < length; i++) if (x[from + i]! > x[from + best]!) best = i;
  return best;
}

/** Greedy decoding of `prompts` in one batch; each result equals decoding it alone. */
export async function generateGreedy(
  model: TextModel,
  prompts: readonly Prompt[],
  { maxNewTokens, eosTokenIds }: GenerateOptions,
): Promise<GenerateResult> {
  if (prompts.length === 0) throw new RangeError('`prompts` must not be empty');
  if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1) {
    throw new RangeError(`\`maxNewTokens\` must be an integer >= 1, got ${maxNewTokens}`);
  }
  const { embeddings, graph, session } = model;
  const { hidden, vocab, layers, kvHeads, headDim } = graph;
  const batch = prompts.length;
  const lengths = prompts.map((p, b) => {
    if (p.ids.length === 0) throw new RangeError(`prompt ${b} has no tokens`);
    return p.ids.length;
  });
  const width = Math.max(...lengths);
  const eos = new Set(eosTokenIds);

  // Prefill: right-padded embeddings [batch, width, hidden].
  const embeds = new Float32Array(batch * width * hidden);
  prompts.forEach((p, b) => {
    const rows = embeddings.embed(p.ids);
    if (p.imageRows !== undefined) {
      spliceImageRows(rows, p.ids, p.imageRows, { imageTokenId: model.imageTokenId, hidden });
    }
    embeds.set(rows, b * width * hidden);
  });
  // The cache is in the graph's float type (float16 for a float16 checkpoint); the host
  // never reads it. The last generated token is never fed back, hence the - 1.
  const maxLength = width + maxNewTokens - 1;
  const cacheDims = [batch, kvHeads, maxLength, headDim];
  const cacheElements = batch * kvHeads * maxLength * headDim;
  const feeds: Record<string, ort.Tensor> = {};
  const fetches: Record<string, ort.Tensor | null> = { logits: null };
  // group-query: each buffer is both past and preallocated present, GQA writes the new keys.
  // matmul: the graph only reads the buffer; the new keys and values come back as new_* and
  // are written here at each sequence's positions (what the decoder engine's runner does).
  const shared = graph.attention === 'group-query';
  const writes: Array<{ name: string; buffer: Float32Array | Uint16Array }> = [];
  for (let l = 0; l < layers; l++) {
    const n = cacheNames(l);
    for (const [past, present, fresh] of [
      [n.pastKey, n.presentKey, n.newKey],
      [n.pastValue, n.presentValue, n.newValue],
    ] as const) {
      const data =
        graph.cacheType === 'float16'
          ? new Uint16Array(cacheElements)
          : new Float32Array(cacheElements);
      const buffer =
        data instanceof Uint16Array
          ? makeTensor('float16', data, cacheDims)
          : makeTensor('float32', data, cacheDims);
      feeds[past] = buffer;
      if (shared) fetches[present] = buffer;
      else {
        fetches[fresh] = null;
        writes.push({ name: fresh, buffer: data });
      }
    }
  }
  /** Writes a step's new_* rows [batch, seq, kv heads · d] at positions first[b] + t. */
  const writeNew = (out: ort.InferenceSession.ReturnType, first: ArrayLike<number>) => {
    for (const { name, buffer } of writes) {
      const fresh = readOutput(out, name, graph.cacheType).data;
      const seq = fresh.length / (batch * kvHeads * headDim);
      for (let b = 0; b < batch; b++) {
        for (let t = 0; t < seq; t++) {
          for (let h = 0; h < kvHeads; h++) {
            const from = ((b * seq + t) * kvHeads + h) * headDim;
            const to = ((b * kvHeads + h) * maxLength + first[b]! + t) * headDim;
            buffer.set(fresh.subarray(from, from + headDim), to);
          }
        }
      }
    }
  };
  const step = async (
    inputsEmbeds: ort.Tensor,
    seqlensK: Int32Array,
    total: number,
    logitPositions: BigInt64Array,
    positionIds: BigInt64Array,
  ) => {
    feeds['inputs_embeds'] = inputsEmbeds;
    feeds['seqlens_k'] = makeTensor('int32', seqlensK, [batch]);
    feeds['total_sequence_length'] = makeTensor('int32', Int32Array.from([total]), []);
    feeds['logit_positions'] = makeTensor('int64', logitPositions, [batch, 1]);
    const seq = positionIds.length / batch;
    feeds['position_ids'] = makeTensor('int64', positionIds, [batch, seq]);
    if (graph.attention === 'adaptive') {
      feeds['group_query'] = makeTensor(
        'bool',
        Uint8Array.of(useGroupQuery(batch, seq) ? 1 : 0),
        [],
      );
    }
    const out = await session.run(feeds, fetches);
    // A step's first position per sequence: its cache length before the step (0 in prefill).
    writeNew(
      out,
      Array.from(seqlensK, (k) => Math.max(0, k + 1 - seq)),
    );
    return readOutput(out, 'logits', 'float32').data; // [batch, 1, vocab]
  };

  let started = performance.now();
  const prefill = await step(
    makeTensor('float32', embeds, [batch, width, hidden]),
    Int32Array.from(lengths, (n) => n - 1),
    width,
    BigInt64Array.from(lengths, (n) => BigInt(n - 1)),
    // Each token's position is its index; right padding past a prompt's end is never read.
    BigInt64Array.from({ length: batch * width }, (_, i) => BigInt(i % width)),
  );
  const prefillMs = performance.now() - started;
  const lastToken = new BigInt64Array(batch); // a decode step's one position
  const sequences: GeneratedSequence[] = prompts.map((p, b) => {
    const at = b * vocab;
    return {
      promptIds: [...p.ids],
      generatedIds: [argmax(prefill, at, vocab)],
      prefillLogits: prefill.slice(at, at + vocab),
    };
  });
  const done = sequences.map(
    (s) => eos.has(s.generatedIds[0]!) || s.generatedIds.length >= maxNewTokens,
  );

  // Decode: one token per sequence per step; finished ones keep feeding their last token
  // (ignored) so the batch keeps its shape.
  started = performance.now();
  let decodeSteps = 0;
  const cacheLengths = Int32Array.from(lengths);
  let buffer = width;
  while (done.some((d) => !d)) {
    const tokens = sequences.map((s) => s.generatedIds[s.generatedIds.length - 1]!);
    const logits = await step(
      makeTensor('float32', embeddings.embed(tokens), [batch, 1, hidden]),
      cacheLengths.slice(),
      buffer + 1,
      lastToken,
      BigInt64Array.from(cacheLengths, BigInt),
    );
    decodeSteps++;
    buffer++;
    for (let b = 0; b < batch; b++) {
      cacheLengths[b] = cacheLengths[b]! + 1;
      if (done[b]) continue;
      const next = argmax(logits, b * vocab, vocab);
      const ids = sequences[b]!.generatedIds;
      ids.push(next);
      done[b] = eos.has(next) || ids.length >= maxNewTokens;
    }
  }
  return { sequences, prefillMs, decodeMs: performance.now() - started, decodeSteps };
}
