// `npm run bench:preprocess`: throughput and latency of the preprocessor service over gRPC at
// concurrency 1 and 8 on a fixed image set, beside the reference Idefics2ImageProcessor
// (transformers, PIL) on the same images in the same run when Python with transformers is
// available (LOUPE_REFERENCE_PYTHON, else python3).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { PreprocessorClient } from '../../proto/gen/loupe/v1/preprocessor.js';
import { DEFAULT_IMAGE_PROCESSOR_CONFIG, preprocessImage } from '../../services/model/index.js';
import { clientChannelOptions, MemoryBudget, packageRoot } from '../../services/runtime/index.js';
import { startBenchService } from '../lib/bench-service.js';
import { PreprocessPool } from '../../services/preprocessor/pool.js';

const IMAGES = [
  'jpeg-2400x1600.jpg',
  'jpeg-1600x1067.jpg',
  'jpeg-exif6-1200x800.jpg',
  'jpeg-odd-999x1001.jpg',
  'jpeg-444-1000x700.jpg',
  'png-rgba-400x300.png',
  'png-tall-760x1960.png',
  'webp-lossy-640x480.webp',
];
const SPLIT = process.env.BENCH_SPLIT !== 'off';
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4); // passes over the image set per concurrency

interface Result {
  imagesPerS: number;
  p50Ms: number;
  p99Ms: number;
  n: number;
}

const root = packageRoot();
const imageDir = join(root, 'test', 'fixtures', 'images');
const images = IMAGES.map((name) => ({ name, bytes: readFileSync(join(imageDir, name)) }));

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function startService(): Promise<{ address: string; stop: () => Promise<void> }> {
  const service = await startBenchService('preprocessor', {
    LOUPE_PREPROCESSOR_HOST: '127.0.0.1',
    LOUPE_PREPROCESSOR_PORT: '0',
    LOUPE_PREPROCESSOR_METRICS_PORT: '0',
  });
  return { address: `127.0.0.1:${Number(service.ready.grpcPort)}`, stop: service.stop };
}

/** Runs every image `rounds` times through `process`, `concurrency` at a time. */
async function measure(
  concurrency: number,
  rounds: number,
  process: (bytes: Buffer) => Promise<unknown>,
): Promise<Result> {
  const jobs = Array.from({ length: rounds }, () => images).flat();
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < jobs.length) {
        const job = jobs[next++]!;
        const t0 = performance.now();
        await process(job.bytes);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    imagesPerS: jobs.length / seconds,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    n: jobs.length,
  };
}

const runLoupe = (client: PreprocessorClient, concurrency: number, rounds: number) =>
  measure(
    concurrency,
    rounds,
    (image) =>
      new Promise<void>((resolve, reject) =>
        client.preprocess({ image, split: SPLIT }, (error) => (error ? reject(error) : resolve())),
      ),
  );

const LIMITS = { maxBytes: 64 << 20, maxPixels: 100_000_000, maxFrames: 1000, timeoutSeconds: 60 };

/** The same work without gRPC: in this thread at concurrency 1, in the service's worker pool at N. */
async function runInProcess(concurrency: number, rounds: number): Promise<Result> {
  const pool =
    concurrency > 1
      ? new PreprocessPool({
          workers: availableParallelism(),
          maxQueue: concurrency,
          setup: { processorConfig: DEFAULT_IMAGE_PROCESSOR_CONFIG, limits: LIMITS },
          // Timing only: a budget nothing reaches.
          budget: new MemoryBudget(Number.MAX_SAFE_INTEGER),
        })
      : undefined;
  const one = (bytes: Buffer) =>
    pool
      ? // A copy per call, as a gRPC request brings: the pool moves it to its worker (forWorker
        // in pool.ts), which would detach a buffer reused from one call to the next.
        pool.run(
          { image: new Uint8Array(bytes), split: SPLIT, cost: 0, held: 0 },
          new AbortController().signal,
        )
      : preprocessImage(bytes, {
          config: DEFAULT_IMAGE_PROCESSOR_CONFIG,
          split: SPLIT,
          limits: LIMITS,
        });
  try {
    for (const job of images) await one(job.bytes); // warm-up
    return await measure(concurrency, rounds, one);
  } finally {
    await pool?.close();
  }
}

function referencePython(): string | undefined {
  const candidates = [process.env.LOUPE_REFERENCE_PYTHON, 'python3'].filter(
    (c): c is string => !!c,
  );
  for (const python of candidates) {
    try {
      execFileSync(python, ['-c', 'import transformers, PIL'], { stdio: 'ignore' });
      return python;
    } catch {
      // not this one
    }
  }
  return undefined;
}

function runReference(python: string, concurrency: number, rounds: number): Result {
  const out = execFileSync(
    python,
    [
      join(root, 'test', 'fixtures', 'reference_preprocess_bench.py'),
      '--split',
      SPLIT ? 'on' : 'off',
      '--concurrency',
      String(concurrency),
      '--iterations',
      String(rounds),
      '--images',
      ...images.map((i) => join(imageDir, i.name)),
    ],
    {
      encoding: 'utf8',
      maxBuffer: 16 * 1024 * 1024,
      env: { ...process.env, TRANSFORMERS_VERBOSITY: 'error' },
    },
  );
  const line = out.trim().split('\n').pop()!;
  const r = JSON.parse(line) as { images_per_s: number; p50_ms: number; p99_ms: number; n: number };
  return { imagesPerS: r.images_per_s, p50Ms: r.p50_ms, p99Ms: r.p99_ms, n: r.n };
}

const fmt = (r: Result | undefined) =>
  r
    ? `${r.imagesPerS.toFixed(1).padStart(8)} img/s  p50 ${r.p50Ms.toFixed(1).padStart(7)} ms  p99 ${r.p99Ms.toFixed(1).padStart(7)} ms`
    : '   (reference not available)';

async function main(): Promise<void> {
  console.log(
    `preprocessor benchmark: ${images.length} images × ${ROUNDS} rounds, split=${SPLIT ? 'on' : 'off'}`,
  );
  console.log(
    `machine: ${cpus()[0]?.model ?? 'unknown cpu'}, ${availableParallelism()} cores, node ${process.version}`,
  );
  const service = await startService();
  const client = new PreprocessorClient(
    service.address,
    credentials.createInsecure(),
    clientChannelOptions(256 << 20),
  );
  const python = referencePython();
  if (!python)
    console.log(
      'reference: Python with transformers not found (set LOUPE_REFERENCE_PYTHON); Loupe only',
    );
  try {
    await runLoupe(client, 2, 1); // warm-up: JIT, worker start, libvips caches
    const rows: Array<{
      concurrency: number;
      loupe: Result;
      inProcess: Result;
      reference?: Result;
    }> = [];
    for (const concurrency of [1, 8]) {
      const loupe = await runLoupe(client, concurrency, ROUNDS);
      const inProcess = await runInProcess(concurrency, ROUNDS);
      const reference = python ? runReference(python, concurrency, ROUNDS) : undefined;
      rows.push({ concurrency, loupe, inProcess, reference });
    }
    console.log('');
    const ratio = (a: Result, b: Result | undefined) =>
      b ? `   ${(a.imagesPerS / b.imagesPerS).toFixed(2)}× the reference` : '';
    for (const { concurrency, loupe, inProcess, reference } of rows) {
      console.log(`concurrency ${concurrency}`);
      console.log(`  loupe service (gRPC)  ${fmt(loupe)}${ratio(loupe, reference)}`);
      console.log(`  loupe work, no gRPC   ${fmt(inProcess)}${ratio(inProcess, reference)}`);
      console.log(`  reference (PIL)       ${fmt(reference)}`);
    }
    console.log(
      '\ngoal: the service at >= 5x the reference throughput. "no gRPC" is the same decode, split',
    );
    console.log(
      'and resize (in this thread at concurrency 1, in the worker pool at 8) without the transport.',
    );
  } finally {
    client.close();
    await service.stop();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
