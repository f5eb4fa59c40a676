// `npm run bench:decoder` (docs/decoder-engine.md, "Benchmark"): the decoder on the `small`
// random checkpoint's dimensions with idefics2-8b's real 32,003-token vocabulary
// (wide-vocab-checkpoint.ts, written once under .loupe/), in five parts, each figure printed
// beside its goal from issues 14 and 16 and beside a baseline measured in the same run:
//
//   1. ONNX Runtime's MatMul peak on this machine (matmul-peak.ts): the rate "arithmetic" is
//      measured at.
//   2. A decode step's time, split (step-breakdown.ts): the graph, the runner's host work,
//      sampling, bookkeeping, beside the step's arithmetic, at 1 and 16 streams with the
//      engine's `adaptive` attention; then the baselines: 1 stream with the matmul attention
//      alone, 1 and 16 with GroupQueryAttention alone (the runner before), and 16 with
//      GroupQueryAttention and views as long as the context (before the views followed the
//      sequences), at the default context of 2,048.
//   3. Aggregate throughput and time to first token of the decoder service over gRPC at 1, 4
//      and 16 concurrent streams: prompts of 64, 128, 192 and 256 tokens, greedy, 64 new
//      tokens; closed loop, 2 × streams requests per level (at least 4) after one warm-up
//      request per stream; prefix cache off (the levels resend the same four prompts).
//   4. A conversation (multi-turn.ts): an image of 320 tokens and a question, then three
//      follow-ups each resending the conversation with the previous answer; time to first
//      token per turn, median of 3 conversations, with the prefix cache off and on.
//   5. Structured output (docs/structured-output.md): part 3's requests at 1 and 16 streams
//      constrained by a 20-property json_schema, against the same requests free; and the time
//      to first token of the schema's first request (compiled) and second (cached).
//
// And, when Python with transformers is found (LOUPE_REFERENCE_PYTHON, else python3), the
// reference (transformers, PyTorch CPU, same weights) generating part 3's requests one after
// another. BENCH_THREADS (default availableParallelism()) sets ONNX Runtime's intra-op threads
// and torch's. About two minutes on two cores; the 1-minute load average is printed with each
// part, since other work on the machine skews every figure.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DecoderClient, GenerateRequest } from '../../proto/gen/loupe/v1/decoder.js';
import { openCheckpoint, seededUniform } from '../../services/model/index.js';
import { packageRoot } from '../../services/runtime/index.js';
import { benchRequest, generate, startDecoder } from './decoder-service.js';
import { matmulPeak } from './matmul-peak.js';
import { converse, IMAGE_TOKENS, TURNS, type Conversation } from './multi-turn.js';
import { linearFloor, linearFlops } from './linear-floor.js';
import { stepBreakdowns, type Breakdown } from './step-breakdown.js';
import { WIDE_VOCAB, wideVocabCheckpoint } from './wide-vocab-checkpoint.js';

const THREADS = Number(process.env.BENCH_THREADS ?? availableParallelism());
const STREAMS = [1, 4, 16];
const PROMPT_LENGTHS = [64, 128, 192, 256];
const MAX_NEW_TOKENS = 64;
const CONVERSATIONS = 3;
/** The default LOUPE_DECODER_MAX_CONTEXT, for the step breakdown. */
const DEFAULT_CONTEXT = 2048;
const root = packageRoot();

const GOALS = {
  streams: 6,
  arithmetic: 0.5,
  laterTurns: 0.25,
};

const load = () => loadavg()[0]!.toFixed(2);
const out = (line = '') => process.stdout.write(`${line}\n`);
const pad = (cells: Array<[string, number]>) =>
  cells.map(([c, w], i) => (i === 0 ? c.padEnd(w) : c.padStart(w))).join('');
const percent = (x: number) => `${(100 * x).toFixed(0)}%`;
const meets = (ok: boolean) => (ok ? 'met' : 'NOT met');

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function prompts(vocab: number): number[][] {
  const next = seededUniform(7);
  // BOS, then ids clear of the special tokens.
  return PROMPT_LENGTHS.map((n) => [
    1,
    ...Array.from({ length: n - 1 }, () => 3 + Math.floor(next() * (vocab - 10))),
  ]);
}

/** A 20-property object (integers, booleans, enums), bench part 5's schema. */
const TWENTY_PROPERTIES = {
  type: 'object',
  properties: Object.fromEntries(
    Array.from({ length: 20 }, (_, i) => [
      `field_${i}`,
      i % 3 === 0
        ? { type: 'integer', minimum: 0, maximum: 1000 }
        : i % 3 === 1
          ? { type: 'boolean' }
          : { enum: ['low', 'medium', 'high'] },
    ]),
  ),
  required: Array.from({ length: 20 }, (_, i) => `field_${i}`),
  additionalProperties: false,
};

interface Level {
  tokensPerS: number;
  ttftP50: number;
  ttftP99: number;
  requests: number;
}

async function level(
  client: DecoderClient,
  requests: GenerateRequest[],
  streams: number,
): Promise<Level> {
  await Promise.all(
    Array.from({ length: streams }, (_, i) => generate(client, requests[i % requests.length]!)),
  );
  const n = Math.max(4, 2 * streams);
  let next = 0;
  let tokens = 0;
  const ttfts: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: streams }, async () => {
      while (next < n) {
        const r = await generate(client, requests[next++ % requests.length]!);
        tokens += r.ids.length;
        ttfts.push(r.ttftMs);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  ttfts.sort((a, b) => a - b);
  return {
    tokensPerS: tokens / seconds,
    ttftP50: percentile(ttfts, 50),
    ttftP99: percentile(ttfts, 99),
    requests: n,
  };
}

function referencePython(): string | undefined {
  for (const python of [process.env.LOUPE_REFERENCE_PYTHON, 'python3'].filter(
    (c): c is string => !!c,
  )) {
    try {
      execFileSync(python, ['-c', 'import transformers, torch'], { stdio: 'ignore' });
      return python;
    } catch {
      // not this one
    }
  }
  return undefined;
}

function printBreakdowns(rows: Breakdown[]): void {
  const widths = [9, 13, 9, 8, 9, 9, 9, 10, 13, 12, 12, 8];
  const row = (cells: string[]) => out(pad(cells.map((c, i) => [c, widths[i]!])));
  row([
    'streams',
    'attention',
    'views',
    'argmax',
    'step ms',
    'graph',
    'runner',
    'sampling',
    'bookkeeping',
    'arithmetic',
    'arith share',
    'stride',
  ]);
  for (const b of rows) {
    row([
      String(b.streams),
      b.attention,
      b.fullContextViews ? 'context' : 'span',
      (b.greedyInGraph ?? true) ? 'graph' : 'host',
      b.stepMs.toFixed(2),
      b.graphMs.toFixed(2),
      b.runnerMs.toFixed(2),
      b.sampleMs.toFixed(2),
      b.bookkeepingMs.toFixed(2),
      b.arithmeticMs.toFixed(2),
      percent(b.arithmeticMs / b.stepMs),
      String(b.stride),
    ]);
  }
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'loupe-bench-decoder-'));
  try {
    const checkpoint = wideVocabCheckpoint(root);
    const config = openCheckpoint(checkpoint.dir).config;
    const shape = {
      vocab: config.text.vocabSize,
      hidden: config.text.hiddenSize,
      imageTokenId: config.imageTokenId,
    };
    const started = load();
    out(
      `decoder benchmark: small checkpoint with the ${WIDE_VOCAB.toLocaleString('en')}-token vocabulary (${checkpoint.dir}, ${checkpoint.writtenMs === undefined ? 'reused' : `written in ${(checkpoint.writtenMs / 1000).toFixed(1)} s`}), ${THREADS} threads`,
    );
    out(
      `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, node ${process.version}; 1-minute load average ${started} at the start`,
    );
    if (Number(started) > 0.5 * cpus().length) {
      out('warning: other work is running: every figure below is skewed by it');
    }

    out('\n1. ONNX Runtime MatMul peak');
    const peak = await matmulPeak(work, THREADS);
    out(
      `   ${peak.gflops.toFixed(1)} GFLOP/s (${peak.shape}; by shape: ${peak.all}); load ${load()}`,
    );

    out(
      `\n2. One decode step, in process, context ${DEFAULT_CONTEXT}, prompts of ${PROMPT_LENGTHS.join('/')} tokens (means of the middle 80% of 40 steps, ms)`,
    );
    const breakdowns = await stepBreakdowns(checkpoint.dir, {
      threads: THREADS,
      context: DEFAULT_CONTEXT,
      promptLengths: PROMPT_LENGTHS,
      peakGflops: peak.gflops,
      cases: [
        // The engine's (runnerAttention('cpu')), 1 and 16 streams alternated three times (the
        // ratio's figures: a minute's noise then falls on both), then its parts and the
        // baselines.
        ...[0, 1, 2].flatMap(() =>
          [1, 16].map((streams) => ({
            streams,
            attention: 'adaptive' as const,
            fullContextViews: false,
          })),
        ),
        { streams: 1, attention: 'matmul', fullContextViews: false },
        { streams: 1, attention: 'group-query', fullContextViews: false },
        { streams: 16, attention: 'group-query', fullContextViews: false },
        { streams: 16, attention: 'group-query', fullContextViews: true },
        { streams: 1, attention: 'adaptive', fullContextViews: false, greedyInGraph: false },
        { streams: 16, attention: 'adaptive', fullContextViews: false, greedyInGraph: false },
      ],
    });
    printBreakdowns(breakdowns);
    const alternated = breakdowns.slice(0, 6);
    // The median of the three by step time.
    const middle = (streams: number) =>
      alternated.filter((b) => b.streams === streams).sort((a, b) => a.stepMs - b.stepMs)[1]!;
    const [one, sixteen] = [middle(1), middle(16)];
    const [, oneGqa, sixteenGqa, fullViews, oneHost, sixteenHost] = breakdowns.slice(6) as [
      Breakdown,
      Breakdown,
      Breakdown,
      Breakdown,
      Breakdown,
      Breakdown,
    ];
    out(
      `   adaptive, the median of three alternated runs: 1 stream ${one.stepMs.toFixed(2)} ms, 16 streams ${sixteen.stepMs.toFixed(2)} ms (the figures below)`,
    );
    const decodeRatio = (16 * one.stepMs) / sixteen.stepMs;
    out(
      `   16 streams: adaptive attention vs GroupQueryAttention (baseline): ${(sixteen.stepMs / sixteenGqa.stepMs).toFixed(2)}× the step time; 1 stream: ${(one.stepMs / oneGqa.stepMs).toFixed(2)}×`,
    );
    out(
      `   GroupQueryAttention, 16 streams: views following the span vs as long as the context: ${(sixteenGqa.stepMs / fullViews.stepMs).toFixed(2)}× the step time`,
    );
    out(
      `   greedy tokens from the graph's argmax vs the logits scanned on the host (baseline): ${(sixteen.stepMs / sixteenHost.stepMs).toFixed(2)}× the step time at 16 streams, ${(one.stepMs / oneHost.stepMs).toFixed(2)}× at 1`,
    );
    out(
      `   decode tokens/s, 16 streams vs 1: ${decodeRatio.toFixed(2)}× (goal ≥ ${GOALS.streams}×: ${meets(decodeRatio >= GOALS.streams)}; with GroupQueryAttention only ${((16 * oneGqa.stepMs) / sixteenGqa.stepMs).toFixed(2)}×); load ${load()}`,
    );

    out(
      `\n2b. The floor under a step: its linear layers and LM head alone, one bare ONNX Runtime graph (linear-floor.ts; medians of 60 runs)`,
    );
    const floor = await linearFloor(openCheckpoint(checkpoint.dir), THREADS);
    const floorShare = (16 * floor.rowFlops) / (peak.gflops * 1e6) / floor.sixteenRowsMs;
    const floorRatio = (16 * one.stepMs) / floor.sixteenRowsMs;
    out(
      `   1 row ${floor.oneRowMs.toFixed(2)} ms, 16 rows ${floor.sixteenRowsMs.toFixed(2)} ms (${floor.layout} layout), against ${((16 * floor.rowFlops) / (peak.gflops * 1e6)).toFixed(2)} ms of arithmetic at the peak`,
    );
    out(
      `   so on this machine a 16-stream step's arithmetic share is at most ${percent(floorShare)} (goal ≥ ${percent(GOALS.arithmetic)}), and decode steps at 16 streams reach at most ${floorRatio.toFixed(2)}× the 1-stream step of part 2 (everything but these products free); load ${load()}`,
    );

    out(
      `\n3. Decoder service over gRPC: ${PROMPT_LENGTHS.join('/')}-token prompts, greedy, ${MAX_NEW_TOKENS} new tokens, closed loop, prefix cache off`,
    );
    const ids = prompts(shape.vocab);
    const requests = ids.map((promptTokenIds) =>
      benchRequest({ promptTokenIds, maxNewTokens: MAX_NEW_TOKENS }),
    );
    const levels: Record<number, Level> = {};
    // Part 5's: the same requests constrained by a 20-property JSON Schema.
    const constrained: Record<number, Level> = {};
    const constrainedRequests = requests.map((r) => ({
      ...r,
      responseFormat: {
        format: { $case: 'jsonSchema' as const, value: JSON.stringify(TWENTY_PROPERTIES) },
      },
    }));
    const firstTokens = { plain: 0, cold: 0, cached: 0 };
    const service = await startDecoder(checkpoint.dir, {
      LOUPE_DECODER_THREADS: String(THREADS),
      LOUPE_DECODER_MAX_RUNNING: String(Math.max(...STREAMS)),
      LOUPE_DECODER_MAX_CONTEXT: String(Math.max(...PROMPT_LENGTHS) + MAX_NEW_TOKENS),
      // The levels resend the same four prompts: with prefix caching their prefills would be
      // hits, and the figures no longer comparable with the ones before it.
      LOUPE_DECODER_PREFIX_CACHE_BYTES: '0',
    });
    try {
      for (const streams of STREAMS)
        levels[streams] = await level(service.client, requests, streams);
      // The schema's first request compiles it (and makes the tokenizer's grammar compiler);
      // the second finds it cached: both against a plain request's time to first token.
      firstTokens.plain = (await generate(service.client, requests[0]!)).ttftMs;
      firstTokens.cold = (await generate(service.client, constrainedRequests[0]!)).ttftMs;
      firstTokens.cached = (await generate(service.client, constrainedRequests[0]!)).ttftMs;
      for (const streams of [1, 16])
        constrained[streams] = await level(service.client, constrainedRequests, streams);
    } finally {
      await service.stop();
    }
    let reference: { tokensPerS: number } | undefined;
    const python = referencePython();
    if (python) {
      const inputs = join(work, 'inputs.json');
      writeFileSync(inputs, JSON.stringify({ prompts: ids, max_new_tokens: MAX_NEW_TOKENS }));
      const output = execFileSync(
        python,
        [
          join(root, 'test', 'fixtures', 'model', 'reference_decoder_bench.py'),
          ...['--model', checkpoint.dir, '--threads', String(THREADS), '--inputs', inputs],
        ],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 16 << 20 },
      );
      const r = JSON.parse(output.trim().split('\n').at(-1)!) as {
        tokens: number;
        seconds: number;
      };
      reference = { tokensPerS: r.tokens / r.seconds };
    }
    const levelWidths = [10, 12, 14, 14, 14, 14];
    const levelRow = (cells: string[]) => out(pad(cells.map((c, i) => [c, levelWidths[i]!])));
    levelRow(['streams', 'tokens/s', 'TTFT p50 ms', 'TTFT p99 ms', 'vs 1 stream', 'vs reference']);
    for (const streams of STREAMS) {
      const l = levels[streams]!;
      levelRow([
        String(streams),
        l.tokensPerS.toFixed(1),
        l.ttftP50.toFixed(0),
        l.ttftP99.toFixed(0),
        `${(l.tokensPerS / levels[1]!.tokensPerS).toFixed(2)}×`,
        reference ? `${(l.tokensPerS / reference.tokensPerS).toFixed(2)}×` : 'n/a',
      ]);
    }
    out(
      `   reference (transformers, one request after another): ${reference ? `${reference.tokensPerS.toFixed(1)} tokens/s` : 'not run (no Python with transformers and torch)'}; load ${load()}`,
    );
    const serviceRatio = levels[16]!.tokensPerS / levels[1]!.tokensPerS;
    // A request's prompt costs the same alone or beside 15 others (prefill is arithmetic, and
    // batching does not share it): what the steps of part 2 and the 1-stream time to first
    // token allow the service's ratio to reach.
    const prefillMs = levels[1]!.ttftP50;
    const implied =
      (prefillMs + MAX_NEW_TOKENS * one.stepMs) /
      (prefillMs + (MAX_NEW_TOKENS * sixteen.stepMs) / 16);
    out(
      `   with prompts costing what the 1-stream TTFT says (${prefillMs.toFixed(0)} ms) and part 2's steps, 16 streams can reach ${implied.toFixed(2)}× one stream`,
    );
    // The ceiling: every prompt's arithmetic at the MatMul peak (its tokens through the
    // layers, the LM head once, which gives the first token) and each of the other tokens'
    // decode steps at part 2b's floor.
    const { layers: layerFlops, head: headFlops } = linearFlops(config.text);
    const roundMs =
      Array.from({ length: 16 }, (_, i) => ids[i % ids.length]!.length).reduce(
        (ms, tokens) => ms + (tokens * layerFlops + headFlops) / (peak.gflops * 1e6),
        0,
      ) +
      (MAX_NEW_TOKENS - 1) * floor.sixteenRowsMs;
    const ceiling = (16 * MAX_NEW_TOKENS) / (roundMs / 1000) / levels[1]!.tokensPerS;
    out(
      `   with every prompt at the MatMul peak and every 16-row step at part 2b's floor (nothing else costing anything), 16 streams reach at most ${ceiling.toFixed(2)}× this 1-stream figure (goal ≥ ${GOALS.streams}×)`,
    );

    out(
      `\n4. A conversation: ${IMAGE_TOKENS} image tokens and a question, then ${TURNS - 1} follow-ups, each resending the conversation (median of ${CONVERSATIONS})`,
    );
    const conversations: Record<'off' | 'on', Conversation[]> = { off: [], on: [] };
    for (const cache of ['off', 'on'] as const) {
      const decoder = await startDecoder(checkpoint.dir, {
        LOUPE_DECODER_THREADS: String(THREADS),
        LOUPE_DECODER_MAX_RUNNING: '4',
        LOUPE_DECODER_MAX_CONTEXT: String(DEFAULT_CONTEXT),
        LOUPE_DECODER_PREFIX_CACHE_BYTES: cache === 'on' ? String(256 * 2 ** 20) : '0',
      });
      try {
        await converse(decoder.client, shape, 99); // warm-up, its own image and text
        for (let c = 0; c < CONVERSATIONS; c++) {
          conversations[cache].push(await converse(decoder.client, shape, c));
        }
      } finally {
        await decoder.stop();
      }
    }
    const ttft = (cache: 'off' | 'on', turn: number) =>
      median(conversations[cache].map((c) => c.ttftMs[turn]!));
    const turnWidths = [8, 15, 14, 14, 10, 16];
    const turnRow = (cells: string[]) => out(pad(cells.map((c, i) => [c, turnWidths[i]!])));
    turnRow(['turn', 'prompt tokens', 'TTFT off ms', 'TTFT on ms', 'on/off', 'on vs turn 1']);
    const laterTurns: number[] = [];
    for (let turn = 0; turn < TURNS; turn++) {
      const vsFirst = ttft('on', turn) / ttft('on', 0);
      if (turn > 0) laterTurns.push(vsFirst);
      turnRow([
        String(turn + 1),
        String(conversations.on[0]!.promptTokens[turn]),
        ttft('off', turn).toFixed(1),
        ttft('on', turn).toFixed(1),
        percent(ttft('on', turn) / ttft('off', turn)),
        percent(vsFirst),
      ]);
    }
    out(`   load ${load()}`);

    out(
      `\n5. Structured output: part 3's requests with a 20-property json_schema (docs/structured-output.md)`,
    );
    const slower = (streams: number) =>
      1 - constrained[streams]!.tokensPerS / levels[streams]!.tokensPerS;
    for (const streams of [1, 16]) {
      out(
        `   ${String(streams).padStart(2)} streams: ${constrained[streams]!.tokensPerS.toFixed(1)} tokens/s constrained vs ${levels[streams]!.tokensPerS.toFixed(1)} free: ${percent(slower(streams))} slower`,
      );
    }
    out(
      `   first token: ${firstTokens.plain.toFixed(0)} ms free, ${firstTokens.cold.toFixed(0)} ms with the schema cold (compiled, and the grammar compiler made), ${firstTokens.cached.toFixed(0)} ms cached; load ${load()}`,
    );

    out('\nGoals (issue 14)');
    const goalWidths = [58, 18, 10, 9];
    const goalRow = (cells: string[]) => out(pad(cells.map((c, i) => [c, goalWidths[i]!])));
    goalRow(['', 'measured', 'goal', '']);
    goalRow([
      '16 streams vs 1, service tokens/s (part 3)',
      `${serviceRatio.toFixed(2)}×`,
      `>= ${GOALS.streams}×`,
      meets(serviceRatio >= GOALS.streams),
    ]);
    goalRow(['  its ceiling on this machine (part 3)', `${ceiling.toFixed(2)}×`, '', '']);
    goalRow([
      '16 streams vs 1, decode steps alone (part 2)',
      `${decodeRatio.toFixed(2)}×`,
      `>= ${GOALS.streams}×`,
      meets(decodeRatio >= GOALS.streams),
    ]);
    goalRow(['  its ceiling on this machine (part 2b)', `${floorRatio.toFixed(2)}×`, '', '']);
    const share = sixteen.arithmeticMs / sixteen.stepMs;
    goalRow([
      'arithmetic share of a 16-stream step (part 2)',
      percent(share),
      `>= ${percent(GOALS.arithmetic)}`,
      meets(share >= GOALS.arithmetic),
    ]);
    goalRow(['  its ceiling on this machine (part 2b)', percent(floorShare), '', '']);
    goalRow([
      'TTFT of turns 2-4 vs turn 1, prefix cache on (part 4)',
      laterTurns.map(percent).join(' '),
      `<= ${percent(GOALS.laterTurns)}`,
      meets(laterTurns.every((r) => r <= GOALS.laterTurns)),
    ]);
    out('\nGoal (issue 16)');
    goalRow([
      'a 20-property json_schema, tokens/s lost at 1 and 16 streams (part 5)',
      `${percent(slower(1))} ${percent(slower(16))}`,
      '<= 10%',
      meets(slower(1) <= 0.1 && slower(16) <= 0.1),
    ]);
    out(`\n1-minute load average: ${started} at the start, ${load()} at the end.`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench:decoder failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
