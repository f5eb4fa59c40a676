// `npm run bench:model`: the model's throughput on the `small` random checkpoint: vision
// sub-images/s, prefill tokens/s and decode tokens/s at batch 1 and 8, beside the reference
// (Idefics2ForConditionalGeneration, PyTorch CPU, same weights, same inputs, same thread
// count) in the same run when Python with transformers and torch is available
// (LOUPE_REFERENCE_PYTHON, else python3), and the achieved GFLOP/s beside an ONNX Runtime
// MatMul peak measured in the same run.
//
// BENCH_THREADS (default availableParallelism()) sets ONNX Runtime's intra-op threads and
// torch.set_num_threads alike. Every figure is the best (shortest) of its timed runs, after
// an untimed warm-up: other work on a shared machine only ever slows a run down, and the
// bench warns when the load average says there was some.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { InferenceSession } from 'onnxruntime-node';
import {
  buildVisionGraph,
  createSession,
  encodeImages,
  expandImagePrompt,
  generateGreedy,
  GraphBuilder,
  loadImageProcessorConfig,
  loadTextModel,
  loadTokenizer,
  makeTensor,
  openCheckpoint,
  preprocessImage,
  writeTinyModel,
  type Checkpoint,
  type SubImage,
  type TextModel,
} from '../../services/model/index.js';
import { packageRoot } from '../../services/runtime/index.js';

const THREADS = Number(process.env.BENCH_THREADS ?? availableParallelism());
if (!Number.isSafeInteger(THREADS) || THREADS < 1) {
  throw new RangeError(`BENCH_THREADS must be an integer >= 1, got ${process.env.BENCH_THREADS}`);
}
const MAX_NEW_TOKENS = 32;
const IMAGE = 'jpeg-1600x1067.jpg'; // split off: one 980×653 sub-image
const BATCH_1_LENGTH = 320;
const BATCH_8_LENGTHS = [384, 352, 320, 288, 256, 224, 192, 160];
// Batch 8 runs right after batch 1 on the same session, without a warm-up of its own (it
// takes ~10 s a run on 2 cores), on both sides.
const VISION = [
  { batch: 1, iterations: 3, warmUp: true },
  { batch: 8, iterations: 1, warmUp: false },
];
const TEXT_ITERATIONS: Record<number, number> = { 1: 5, 8: 3 };
// MatMul shapes for the peak: a large square-ish one and the text and vision models' own.
const MATMUL_SHAPES: ReadonlyArray<readonly [number, number, number]> = [
  [512, 2048, 2048],
  [512, 512, 1536],
  [1024, 384, 1536],
];
const MATMUL_ITERATIONS = 10;
const LIMITS = { maxBytes: 64 << 20, maxPixels: 100_000_000, maxFrames: 1000, timeoutSeconds: 60 };
const TEXT =
  'Describe the picture in detail: the people, the objects, the colours, the light, where it ' +
  'was taken and what happens in it. Then say what the weather is like, which season it is, ' +
  'what time of day it could be, and what might have happened just before the photograph was ' +
  'taken and just after. ';

async function timed<T>(run: () => Promise<T>, iterations: number, warmUp = true): Promise<number> {
  if (warmUp) await run();
  const times: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    await run();
    times.push(performance.now() - t0);
  }
  return Math.min(...times);
}

// ---- FLOP estimates (multiply-add = 2 FLOPs; norms, activations and softmax left out) ----

function weightElements(checkpoint: Checkpoint, test: (name: string) => boolean): number {
  let n = 0;
  for (const [name, t] of checkpoint.tensors) {
    if (t.shape.length >= 2 && name.endsWith('.weight') && test(name)) {
      n += t.shape.reduce((a, b) => a * b, 1);
    }
  }
  return n;
}

/** FLOPs of the vision tower + connector for one sub-image of `patches` patches. */
function visionFlops(checkpoint: Checkpoint, patches: number): number {
  const { vision: vc, perceiver: pc } = checkpoint.config;
  const latents = pc.nLatents;
  const perPatch = weightElements(
    checkpoint,
    (n) =>
      n.includes('patch_embedding') ||
      n.startsWith('model.vision_model.encoder.') ||
      n.includes('modality_projection'),
  );
  const perceiverKv = weightElements(checkpoint, (n) =>
    /perceiver_resampler\.layers\.\d+\.self_attn\.[kv]_proj/.test(n),
  );
  const perLatent = weightElements(
    checkpoint,
    (n) => n.includes('perceiver_resampler.layers.') && !/self_attn\.[kv]_proj/.test(n),
  );
  const visionAttention = vc.numHiddenLayers * 4 * patches * patches * vc.hiddenSize;
  const perceiverAttention = pc.depth * 4 * latents * (patches + latents) * pc.nHeads * pc.headDim;
  return (
    2 * patches * perPatch +
    2 * (patches + latents) * perceiverKv +
    2 * latents * perLatent +
    visionAttention +
    perceiverAttention
  );
}

/** Weight elements of the decoder layers (the matmuls every token goes through). */
function layerElements(checkpoint: Checkpoint): number {
  return weightElements(checkpoint, (n) => n.startsWith('model.text_model.layers.'));
}

/** Elements of the LM head (tied or not), which a prefill runs on one position only. */
function headElements(checkpoint: Checkpoint): number {
  const t = checkpoint.config.text;
  return t.vocabSize * t.hiddenSize;
}

/**
 * FLOPs of prefilling prompts of `lengths` tokens (real tokens only, causal attention, the LM
 * head on the last position: both sides ask for that one only).
 */
function prefillFlops(checkpoint: Checkpoint, lengths: readonly number[]): number {
  const t = checkpoint.config.text;
  const layers = layerElements(checkpoint);
  const width = t.numAttentionHeads * t.headDim;
  return lengths.reduce(
    (sum, n) =>
      sum +
      2 * n * layers +
      2 * headElements(checkpoint) +
      t.numHiddenLayers * 4 * width * ((n * (n + 1)) / 2),
    0,
  );
}

/** FLOPs of `steps` decode steps after prompts of `lengths` tokens. */
function decodeFlops(checkpoint: Checkpoint, lengths: readonly number[], steps: number): number {
  const t = checkpoint.config.text;
  const linear = layerElements(checkpoint) + headElements(checkpoint);
  const width = t.numAttentionHeads * t.headDim;
  let sum = 0;
  for (const n of lengths) {
    for (let s = 1; s <= steps; s++) sum += 2 * linear + t.numHiddenLayers * 4 * width * (n + s);
  }
  return sum;
}

// ---- ONNX Runtime MatMul peak ----

interface MatMulPeak {
  gflops: number;
  ms: number;
  shape: string;
  all: string;
}

/** GFLOP/s of one MatMul [m,k]×[k,n] (B a constant, prepacked), best of `iterations`. */
async function matmulGflops(
  dir: string,
  [m, k, n]: readonly [number, number, number],
): Promise<{ gflops: number; ms: number }> {
  const g = new GraphBuilder({ name: 'matmul_peak' });
  const a = g.input('a', 'float32', [m, k]);
  const weights = Float32Array.from({ length: k * n }, (_, i) => ((i % 97) - 48) / 1000);
  const b = g.initializer('b', 'float32', [k, n], weights);
  const y = g.node1({ opType: 'MatMul', inputs: [a, b], output: 'y' });
  g.output(y, 'float32', [m, n]);
  const path = join(dir, `matmul-${m}x${k}x${n}.onnx`);
  g.writeModel(path);
  const session = await createSession(path, { intraOpThreads: THREADS });
  try {
    const input = makeTensor(
      'float32',
      Float32Array.from({ length: m * k }, (_, i) => ((i % 89) - 44) / 1000),
      [m, k],
    );
    await session.run({ a: input }); // warm-up
    let best = Infinity;
    for (let i = 0; i < MATMUL_ITERATIONS; i++) {
      const t0 = performance.now();
      await session.run({ a: input });
      best = Math.min(best, performance.now() - t0);
    }
    return { gflops: (2 * m * k * n) / (best * 1e6), ms: best };
  } finally {
    await session.release();
  }
}

/** The best MatMul GFLOP/s over MATMUL_SHAPES: the machine's peak as ONNX Runtime reaches it. */
async function matmulPeak(dir: string): Promise<MatMulPeak> {
  let peak: MatMulPeak | undefined;
  const all: string[] = [];
  for (const shape of MATMUL_SHAPES) {
    const r = await matmulGflops(dir, shape);
    const name = `[${shape[0]},${shape[1]}]×[${shape[1]},${shape[2]}]`;
    all.push(`${name} ${r.gflops.toFixed(0)}`);
    if (!peak || r.gflops > peak.gflops) peak = { ...r, shape: name, all: '' };
  }
  return { ...peak!, all: all.join(', ') };
}

// ---- the reference ----

interface Figures {
  vision: Record<number, { ms: number }>;
  text: Record<number, { prefillMs: number; decodeMs: number; decodeSteps: number }>;
}

function referencePython(): string | undefined {
  const candidates = [process.env.LOUPE_REFERENCE_PYTHON, 'python3'].filter(
    (c): c is string => !!c,
  );
  for (const python of candidates) {
    try {
      execFileSync(python, ['-c', 'import transformers, torch'], { stdio: 'ignore' });
      return python;
    } catch {
      // not this one
    }
  }
  return undefined;
}

function runReference(
  python: string,
  modelDir: string,
  inputsPath: string,
): Figures & { about: string } {
  const out = execFileSync(
    python,
    [
      join(packageRoot(), 'test', 'fixtures', 'model', 'reference_model_bench.py'),
      '--model',
      modelDir,
      '--threads',
      String(THREADS),
      '--inputs',
      inputsPath,
    ],
    {
      encoding: 'utf8',
      maxBuffer: 16 * 1024 * 1024,
      env: { ...process.env, TRANSFORMERS_VERBOSITY: 'error' },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const r = JSON.parse(out.trim().split('\n').pop()!) as {
    vision: Record<string, { ms: number }>;
    text: Record<string, { prefill_ms: number; decode_ms: number; decode_steps: number }>;
    threads: number;
    torch: string;
    transformers: string;
    attn_implementation: string;
  };
  const figures: Figures = { vision: {}, text: {} };
  for (const [batch, v] of Object.entries(r.vision)) figures.vision[Number(batch)] = v;
  for (const [batch, t] of Object.entries(r.text)) {
    figures.text[Number(batch)] = {
      prefillMs: t.prefill_ms,
      decodeMs: t.decode_ms,
      decodeSteps: t.decode_steps,
    };
  }
  return {
    ...figures,
    about: `torch ${r.torch}, transformers ${r.transformers}, ${r.threads} threads, attention ${r.attn_implementation}`,
  };
}

// ---- Loupe ----

async function runLoupe(
  checkpoint: Checkpoint,
  subImage: SubImage,
  prompts: Record<number, number[][]>,
): Promise<Figures> {
  const figures: Figures = { vision: {}, text: {} };
  let imageRows: Float32Array | undefined;
  const vision: InferenceSession = await createSession(buildVisionGraph(checkpoint), {
    intraOpThreads: THREADS,
  });
  try {
    for (const { batch, iterations, warmUp } of VISION) {
      const subImages = Array.from({ length: batch }, () => subImage);
      const ms = await timed(
        async () => {
          const encoded = await encodeImages(vision, subImages, checkpoint.config.vision);
          imageRows ??= encoded.data.slice(0, encoded.dims[1] * encoded.dims[2]);
        },
        iterations,
        warmUp,
      );
      figures.vision[batch] = { ms };
    }
  } finally {
    await vision.release();
  }

  const model: TextModel = await loadTextModel(checkpoint, {
    session: { intraOpThreads: THREADS },
  });
  try {
    for (const [batch, ids] of Object.entries(prompts)) {
      const run = () =>
        generateGreedy(
          model,
          ids.map((p) => ({ ids: p, imageRows })),
          { maxNewTokens: MAX_NEW_TOKENS, eosTokenIds: [-1] }, // no EOS: always 32 tokens
        );
      await run(); // warm-up
      const runs = [];
      for (let i = 0; i < TEXT_ITERATIONS[Number(batch)]!; i++) runs.push(await run());
      figures.text[Number(batch)] = {
        prefillMs: Math.min(...runs.map((r) => r.prefillMs)),
        decodeMs: Math.min(...runs.map((r) => r.decodeMs)),
        decodeSteps: runs[0]!.decodeSteps,
      };
    }
  } finally {
    await model.release();
  }
  return figures;
}

// ---- report ----

const pad = (s: string, n: number) => s.padStart(n);
/** Two decimals below 10 (images/s), one above (tokens/s). */
const fixed = (x: number) => x.toFixed(x < 10 ? 2 : 1);

async function main(): Promise<void> {
  const root = packageRoot();
  const dir = mkdtempSync(join(tmpdir(), 'loupe-bench-model-'));
  try {
    const modelDir = join(dir, 'small');
    writeTinyModel({ out: modelDir, size: 'small', seed: 0 });
    const checkpoint = openCheckpoint(modelDir);
    const processor = loadImageProcessorConfig(modelDir);
    const tokenizer = loadTokenizer(modelDir);

    const bytes = readFileSync(join(root, 'test', 'fixtures', 'images', IMAGE));
    const { subImages, split } = await preprocessImage(bytes, {
      config: processor,
      split: false,
      limits: LIMITS,
    });
    const subImage = subImages[0]!;
    const all = tokenizer.encode(
      expandImagePrompt('<image>' + TEXT.repeat(12), {
        imageSeqLen: processor.imageSeqLen,
        splits: [split],
      }),
    );
    const longest = Math.max(BATCH_1_LENGTH, ...BATCH_8_LENGTHS);
    if (all.length < longest) throw new Error(`the prompt has ${all.length} tokens < ${longest}`);
    const prompts: Record<number, number[][]> = {
      1: [all.slice(0, BATCH_1_LENGTH)],
      8: BATCH_8_LENGTHS.map((n) => all.slice(0, n)),
    };

    const pixelsFile = join(dir, 'pixels.u8');
    writeFileSync(pixelsFile, subImage.pixels);
    const inputsPath = join(dir, 'inputs.json');
    writeFileSync(
      inputsPath,
      JSON.stringify({
        pixels_file: pixelsFile,
        height: subImage.height,
        width: subImage.width,
        vision: VISION,
        text: Object.entries(prompts).map(([batch, p]) => ({
          batch: Number(batch),
          iterations: TEXT_ITERATIONS[Number(batch)],
          prompts: p,
        })),
        max_new_tokens: MAX_NEW_TOKENS,
      }),
    );

    const { vision: vc } = checkpoint.config;
    const patches =
      Math.floor(subImage.height / vc.patchSize) * Math.floor(subImage.width / vc.patchSize);
    console.log(
      `model benchmark: small checkpoint (seed 0), one ${subImage.width}×${subImage.height} sub-image (${patches} patches), ` +
        `prompts of ${BATCH_1_LENGTH} tokens (batch 1) and ${BATCH_8_LENGTHS.join('/')} (batch 8), ` +
        `${MAX_NEW_TOKENS} new tokens, ${THREADS} threads`,
    );
    console.log(
      `machine: ${cpus()[0]?.model ?? 'unknown cpu'}, ${availableParallelism()} cores, node ${process.version}`,
    );

    const loadBefore = loadavg()[0]!;
    if (loadBefore > 0.5) {
      console.log(
        `warning: 1-minute load average ${loadBefore.toFixed(2)} before starting: other work on the machine skews the figures`,
      );
    }
    const peak = await matmulPeak(dir);
    const loupe = await runLoupe(checkpoint, subImage, prompts);
    const python = referencePython();
    let reference: (Figures & { about: string }) | undefined;
    if (python) reference = runReference(python, modelDir, inputsPath);
    else
      console.log(
        'reference: Python with transformers and torch not found (set LOUPE_REFERENCE_PYTHON); Loupe only',
      );

    console.log('');
    console.log(
      `ONNX Runtime MatMul peak: ${peak.gflops.toFixed(1)} GFLOP/s (${peak.shape} in ${peak.ms.toFixed(2)} ms, best of ${MATMUL_ITERATIONS}; GFLOP/s by shape: ${peak.all})`,
    );
    if (reference) console.log(`reference: ${reference.about}`);
    console.log('');
    console.log(
      `${'measure'.padEnd(26)}${pad('loupe', 9)}${pad('reference', 11)}${pad('ratio', 8)}${pad('GFLOP/s', 10)}${pad('of peak', 9)}${pad('ref GFLOP/s', 13)}`,
    );
    const row = (
      label: string,
      unit: string,
      value: number,
      ref: number | undefined,
      flopsPerUnit: number,
    ) => {
      const gflops = (value * flopsPerUnit) / 1e9;
      const refGflops = ref !== undefined ? (ref * flopsPerUnit) / 1e9 : undefined;
      console.log(
        `${`${label} (${unit})`.padEnd(26)}${pad(fixed(value), 9)}${ref !== undefined ? pad(fixed(ref), 11) : pad('-', 11)}` +
          `${ref !== undefined ? pad(`${(value / ref).toFixed(2)}×`, 8) : pad('-', 8)}` +
          `${pad(gflops.toFixed(1), 10)}${pad(`${((100 * gflops) / peak.gflops).toFixed(0)}%`, 9)}` +
          `${refGflops !== undefined ? pad(refGflops.toFixed(1), 13) : pad('-', 13)}`,
      );
    };
    const perImage = visionFlops(checkpoint, patches);
    for (const { batch } of VISION) {
      const l = loupe.vision[batch]!;
      const r = reference?.vision[batch];
      row(`vision b${batch}`, 'img/s', (1000 * batch) / l.ms, r && (1000 * batch) / r.ms, perImage);
    }
    for (const [batch, ids] of Object.entries(prompts)) {
      const b = Number(batch);
      const lengths = ids.map((p) => p.length);
      const tokens = lengths.reduce((a, c) => a + c, 0);
      const l = loupe.text[b]!;
      const r = reference?.text[b];
      row(
        `prefill b${b}`,
        'tok/s',
        (1000 * tokens) / l.prefillMs,
        r && (1000 * tokens) / r.prefillMs,
        prefillFlops(checkpoint, lengths) / tokens,
      );
      const steps = l.decodeSteps;
      row(
        `decode b${b}`,
        'tok/s',
        (1000 * b * steps) / l.decodeMs,
        r && (1000 * b * r.decodeSteps) / r.decodeMs,
        decodeFlops(checkpoint, lengths, steps) / (b * steps),
      );
    }
    console.log('');
    console.log(
      `vision: ${(perImage / 1e9).toFixed(1)} GFLOP per sub-image (vision attention ${((100 * checkpoint.config.vision.numHiddenLayers * 4 * patches * patches * vc.hiddenSize) / perImage).toFixed(0)}%).`,
    );
    console.log(
      'prefill/decode tokens: real prompt tokens (padding not counted); decode = batch × steps.',
    );
    const weightBytes = 4 * (layerElements(checkpoint) + headElements(checkpoint));
    const bandwidth = (figures: Figures, batch: number) => {
      const t = figures.text[batch]!;
      return `${((weightBytes * t.decodeSteps) / (t.decodeMs * 1e6)).toFixed(1)} GB/s`;
    };
    console.log(
      `decode steps read all ${(weightBytes / 2 ** 20).toFixed(0)} MiB of text weights: ` +
        `${bandwidth(loupe, 1)} at b1 (memory-bound), ${bandwidth(loupe, 8)} at b8` +
        (reference
          ? `; the reference ${bandwidth(reference, 1)} and ${bandwidth(reference, 8)}.`
          : '.'),
    );
    console.log('goal: >= 1.5× the reference at batch 1 and >= 2× at batch 8.');
    console.log(
      `1-minute load average: ${loadBefore.toFixed(2)} at the start, ${loadavg()[0]!.toFixed(2)} at the end (the bench itself keeps ${THREADS} busy).`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
