// `npm run bench:encoder`: the encoder service's throughput and latency at concurrency 1, 8
// and 32, with dynamic batching on and off, side by side, on the `small` random checkpoint.
// Each request carries one sub-image (the preprocessed BENCH_IMAGE, split off) and no content
// hash, so the cache never answers; every figure is model work through real gRPC.
//
//   batching on:  LOUPE_ENCODER_MAX_BATCH=8, LOUPE_ENCODER_MAX_WAIT_MS=5
//   batching off: LOUPE_ENCODER_MAX_BATCH=1, LOUPE_ENCODER_MAX_WAIT_MS=0
//
// Closed loop: `concurrency` callers each send their next request when the last returns,
// max(8, 2 × concurrency) requests per level after one warm-up request per caller.
// BENCH_THREADS (default availableParallelism()) sets the session's intra-op threads.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata } from '@grpc/grpc-js';
import { EncoderClient, type EncodeRequest } from '../../proto/gen/loupe/v1/encoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import {
  loadImageProcessorConfig,
  preprocessImage,
  writeTinyModel,
} from '../../services/model/index.js';
import { clientChannelOptions, packageRoot } from '../../services/runtime/index.js';
import { startBenchService } from '../lib/bench-service.js';

const THREADS = Number(process.env.BENCH_THREADS ?? availableParallelism());
const IMAGE = process.env.BENCH_IMAGE ?? 'webp-lossy-640x480.webp';
const CONCURRENCY = [1, 8, 32];
const MODES = {
  on: { LOUPE_ENCODER_MAX_BATCH: '8', LOUPE_ENCODER_MAX_WAIT_MS: '5' },
  off: { LOUPE_ENCODER_MAX_BATCH: '1', LOUPE_ENCODER_MAX_WAIT_MS: '0' },
} as const;
type Mode = keyof typeof MODES;

interface Result {
  perS: number;
  p50Ms: number;
  p99Ms: number;
  n: number;
}

const root = packageRoot();

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function startEncoder(modelDir: string, env: Record<string, string>) {
  const service = await startBenchService('encoder', {
    LOUPE_MODEL_DIR: modelDir,
    LOUPE_ENCODER_HOST: '127.0.0.1',
    LOUPE_ENCODER_PORT: '0',
    LOUPE_ENCODER_METRICS_PORT: '0',
    LOUPE_ENCODER_THREADS: String(THREADS),
    LOUPE_ENCODER_MAX_QUEUE: '256',
    ...env,
  });
  return {
    address: `127.0.0.1:${Number(service.ready.grpcPort)}`,
    metricsPort: Number(service.ready.metricsPort),
    stop: service.stop,
  };
}

const encode = (client: EncoderClient, request: EncodeRequest) =>
  new Promise<void>((resolve, reject) =>
    client.encode(request, new Metadata(), { deadline: new Date(Date.now() + 600_000) }, (error) =>
      error ? reject(error) : resolve(),
    ),
  );

async function measure(
  client: EncoderClient,
  request: EncodeRequest,
  concurrency: number,
): Promise<Result> {
  // Warm-up: one request per caller, so every level starts from a warm, idle service.
  await Promise.all(Array.from({ length: concurrency }, () => encode(client, request)));
  const n = Math.max(8, 2 * concurrency);
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        next++;
        const t0 = performance.now();
        await encode(client, request);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    perS: n / seconds,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    n,
  };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-bench-encoder-'));
  try {
    const modelDir = join(dir, 'small');
    writeTinyModel({ out: modelDir, size: 'small', seed: 0 });
    const bytes = readFileSync(join(root, 'test', 'fixtures', 'images', IMAGE));
    const { subImages } = await preprocessImage(bytes, {
      config: loadImageProcessorConfig(modelDir),
      split: false,
      limits: { maxBytes: 64 << 20, maxPixels: 100_000_000, maxFrames: 1000, timeoutSeconds: 60 },
    });
    const sub = subImages[0]!;
    const request: EncodeRequest = {
      subImages: [
        {
          height: sub.height,
          width: sub.width,
          pixels: {
            dtype: Dtype.DTYPE_UINT8,
            shape: [3, sub.height, sub.width],
            data: Buffer.from(sub.pixels),
          },
        },
      ],
      contentHash: Buffer.alloc(0),
      split: false,
      outputDtype: Dtype.DTYPE_FLOAT16,
    };
    const load = loadavg()[0]!;
    process.stdout.write(
      `encoder benchmark: small checkpoint (seed 0), one ${sub.width}×${sub.height} sub-image per request (${IMAGE}, split off), float16 out, cache unused, ${THREADS} intra-op threads\n` +
        `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, node ${process.version}\n` +
        (load > 0.5 * cpus().length
          ? `warning: 1-minute load average ${load.toFixed(2)} before starting: other work on the machine skews the figures\n`
          : '') +
        '\n',
    );

    const results = {} as Record<Mode, Record<number, Result & { batch: number }>>;
    for (const mode of ['off', 'on'] as const) {
      results[mode] = {};
      const service = await startEncoder(modelDir, MODES[mode]);
      const client = new EncoderClient(
        service.address,
        credentials.createInsecure(),
        clientChannelOptions(64 << 20),
      );
      try {
        for (const c of CONCURRENCY) {
          const before = await meanBatchCounts(service.metricsPort);
          const r = await measure(client, request, c);
          const after = await meanBatchCounts(service.metricsPort);
          results[mode][c] = {
            ...r,
            batch: (after.sum - before.sum) / Math.max(1, after.count - before.count),
          };
        }
      } finally {
        client.close();
        await service.stop();
      }
    }

    const row = (cells: string[]) =>
      cells.map((c, i) => (i === 0 ? c.padEnd(12) : c.padStart(12))).join('') + '\n';
    process.stdout.write(
      row([
        'concurrency',
        'on img/s',
        'off img/s',
        'ratio',
        'on p50 ms',
        'off p50 ms',
        'on p99 ms',
        'off p99 ms',
        'p99 ratio',
        'on batch',
      ]),
    );
    const verdicts: string[] = [];
    for (const c of CONCURRENCY) {
      const on = results.on[c]!;
      const off = results.off[c]!;
      const ratio = on.perS / off.perS;
      const p99 = on.p99Ms / off.p99Ms;
      process.stdout.write(
        row([
          String(c),
          on.perS.toFixed(2),
          off.perS.toFixed(2),
          `${ratio.toFixed(2)}×`,
          on.p50Ms.toFixed(0),
          off.p50Ms.toFixed(0),
          on.p99Ms.toFixed(0),
          off.p99Ms.toFixed(0),
          `${p99.toFixed(2)}×`,
          on.batch.toFixed(1),
        ]),
      );
      verdicts.push(
        `c=${c}: throughput ${ratio.toFixed(2)}× (${ratio >= 0.95 ? 'no loss' : 'LOSS'}), p99 ${p99.toFixed(2)}× (${p99 <= 2 ? 'within 2×' : 'OVER 2×'})`,
      );
    }
    process.stdout.write(
      `\nratio = batching on / off, same run. Goal on CPU: no throughput loss, p99 within 2× of unbatched (5% noise allowed).\n${verdicts.join('\n')}\n` +
        `on batch = mean sub-images per model run with batching on.\n` +
        `1-minute load average: ${load.toFixed(2)} at the start, ${loadavg()[0]!.toFixed(2)} at the end.\n`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function meanBatchCounts(metricsPort: number): Promise<{ sum: number; count: number }> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  // Lines look like `name{service="encoder"} 12` (the registry's default label) or `name 12`.
  const value = (name: string) =>
    Number(
      text
        .split('\n')
        .find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
        ?.split(' ')
        .at(-1) ?? 0,
    );
  return {
    sum: value('loupe_encoder_batch_size_sum'),
    count: value('loupe_encoder_batch_size_count'),
  };
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench:encoder failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
