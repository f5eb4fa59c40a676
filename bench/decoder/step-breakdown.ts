// Where a decode step's time goes (docs/decoder-engine.md, "A step's host work"), in this
// process: the engine loop over OrtModelRunner, no gRPC, no threads. N streams are admitted
// and prefilled, then decode-only steps are timed, each split into
//   - graph: ONNX Runtime's session.run (the arithmetic and what the kernels do around it),
//   - runner: the rest of runner.run (feeds, writing the new KV into the slots),
//   - sampling: the sampler over every row of logits (greedy steps: taking the graph's argmax),
//   - bookkeeping: the rest of Engine.step (scheduling, assembly, events);
// and beside it the step's arithmetic: its FLOPs (multiply-add = 2; the linear layers and
// LM head of every row, and attention over each row's context) at the MatMul peak.
import type { Checkpoint, TextAttention } from '../../services/model/index.js';
import {
  loadTextModel,
  openCheckpoint,
  seededUniform,
  type TextModel,
} from '../../services/model/index.js';
import { Engine } from '../../services/decoder/engine.js';
import type { ModelRunner, RunnerStep } from '../../services/decoder/model-runner.js';
import { OrtModelRunner } from '../../services/decoder/ort-runner.js';
import { linearFlops } from './linear-floor.js';
import type { EngineRequest } from '../../services/decoder/protocol.js';
import { GREEDY } from '../../services/decoder/sampler.js';

/** Decode steps timed per configuration, after WARM_STEPS untimed ones. */
const STEPS = 40;
const WARM_STEPS = 5;

export interface BreakdownCase {
  streams: number;
  /** The text graph's attention: `matmul` (the engine's on CPU) or GroupQueryAttention. */
  attention: TextAttention;
  /** The runner's views as long as the context (the baseline), or following the span. */
  fullContextViews: boolean;
  /** Greedy steps take the graph's argmax (the default) or scan the logits on the host. */
  greedyInGraph?: boolean;
}

export interface Breakdown extends BreakdownCase {
  /** Means over the middle 80% of the timed steps, ms. */
  stepMs: number;
  graphMs: number;
  runnerMs: number;
  sampleMs: number;
  bookkeepingMs: number;
  /** The step's FLOPs at the MatMul peak, ms. */
  arithmeticMs: number;
  /** The runner's stride at the end (positions per slot its views hold). */
  stride: number;
}

/** Mean of the middle 80% (a step that met another process's burst does not count). */
function trimmedMean(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const cut = Math.floor(sorted.length / 10);
  const kept = sorted.slice(cut, sorted.length - cut);
  return kept.reduce((a, b) => a + b, 0) / kept.length;
}

/** FLOPs of one decode row at `position` (its context is position + 1 tokens). */
function rowFlops(checkpoint: Checkpoint, position: number): number {
  const t = checkpoint.config.text;
  const { layers, head } = linearFlops(t);
  return layers + head + t.numHiddenLayers * 4 * t.numAttentionHeads * t.headDim * (position + 1);
}

export async function stepBreakdowns(
  modelDir: string,
  {
    threads,
    context,
    promptLengths,
    peakGflops,
    cases,
  }: {
    threads: number;
    context: number;
    promptLengths: readonly number[];
    peakGflops: number;
    cases: readonly BreakdownCase[];
  },
): Promise<Breakdown[]> {
  const checkpoint = openCheckpoint(modelDir);
  // One model per attention kind, each with ONNX Runtime's own part of every run timed.
  let graphMs = 0;
  const models = new Map<TextAttention, TextModel>();
  const modelFor = async (attention: TextAttention) => {
    let model = models.get(attention);
    if (model) return model;
    model = await loadTextModel(checkpoint, {
      session: { executionProvider: 'cpu', intraOpThreads: threads },
      attention,
    });
    const session = model.session;
    const run = session.run.bind(session);
    session.run = (async (...args: Parameters<typeof run>) => {
      const started = performance.now();
      try {
        return await run(...args);
      } finally {
        graphMs += performance.now() - started;
      }
    }) as typeof session.run;
    models.set(attention, model);
    return model;
  };
  try {
    const out: Breakdown[] = [];
    for (const c of cases) out.push(await breakdown(await modelFor(c.attention), checkpoint, c));
    return out;
  } finally {
    for (const model of models.values()) await model.release();
  }

  async function breakdown(
    model: TextModel,
    checkpoint: Checkpoint,
    c: BreakdownCase,
  ): Promise<Breakdown> {
    const runner = new OrtModelRunner(
      model,
      { slots: Math.max(c.streams, 1), context, cacheBlocks: 0 },
      { fullContextViews: c.fullContextViews, greedyInGraph: c.greedyInGraph ?? true },
    );
    let stepGraphMs = 0;
    let stepFlops = 0;
    const recording: ModelRunner = {
      vocab: runner.vocab,
      hidden: runner.hidden,
      imageTokenId: runner.imageTokenId,
      kv: runner.kv,
      run: async (step: RunnerStep) => {
        const before = graphMs;
        const output = await runner.run(step);
        stepGraphMs = graphMs - before;
        stepFlops = step.decode.reduce((n, r) => n + rowFlops(checkpoint, r.position), 0);
        return output;
      },
      release: () => Promise.resolve(),
    };
    const engine = new Engine(recording, {
      maxWaiting: c.streams,
      maxPrefillTokens: 512,
      eosTokenIds: [],
    });
    const next = seededUniform(11);
    const vocab = checkpoint.config.text.vocabSize;
    for (let i = 0; i < c.streams; i++) {
      const length = promptLengths[i % promptLengths.length]!;
      const request: EngineRequest = {
        id: `s${i}`,
        promptIds: [
          1,
          ...Array.from({ length: length - 1 }, () => 3 + Math.floor(next() * (vocab - 10))),
        ],
        imageRows: new Uint8Array(0),
        imageDtype: 'float32',
        images: [],
        sampling: GREEDY,
        seed: 0n,
        stopTokenIds: [],
        maxNewTokens: WARM_STEPS + STEPS + 2 * promptLengths.length + 8,
        logprobs: false,
        topLogprobs: 0,
      };
      engine.add(request);
    }
    // Prompts first (several steps), then decode steps with every stream in them.
    for (let guard = 0; ; guard++) {
      if (guard > 10_000) throw new Error('the streams never all decoded');
      const report = await engine.step();
      if (report?.kind === 'decode' && report.decodeRows === c.streams) break;
    }
    const parts = { step: [] as number[], graph: [] as number[], runner: [] as number[] };
    const more = {
      sample: [] as number[],
      bookkeeping: [] as number[],
      arithmetic: [] as number[],
    };
    for (let i = 0; i < WARM_STEPS + STEPS; i++) {
      const report = (await engine.step())!;
      if (report.kind !== 'decode' || report.decodeRows !== c.streams) {
        throw new Error(`step ${i} was not a decode step of ${c.streams} streams`);
      }
      if (i < WARM_STEPS) continue;
      parts.step.push(report.ms);
      parts.graph.push(stepGraphMs);
      parts.runner.push(report.runMs - stepGraphMs);
      more.sample.push(report.sampleMs);
      more.bookkeeping.push(report.ms - report.runMs - report.sampleMs);
      more.arithmetic.push(stepFlops / (peakGflops * 1e6));
    }
    engine.abortAll();
    return {
      ...c,
      stepMs: trimmedMean(parts.step),
      graphMs: trimmedMean(parts.graph),
      runnerMs: trimmedMean(parts.runner),
      sampleMs: trimmedMean(more.sample),
      bookkeepingMs: trimmedMean(more.bookkeeping),
      arithmeticMs: trimmedMean(more.arithmetic),
      stride: runner.stride,
    };
  }
}
