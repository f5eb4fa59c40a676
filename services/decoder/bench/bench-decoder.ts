// `npm run bench:decoder`: the decoder service's aggregate generation throughput and time to
// first token at 1, 4 and 16 concurrent streams, on the `small` random checkpoint, beside the
// reference (transformers, PyTorch CPU, same weights, same thread count) generating the same
// requests one after another in the same run when Python with transformers is found
// (LOUPE_REFERENCE_PYTHON, else python3).
//
// The prompt mix: four text prompts of 64, 128, 192 and 256 tokens (seeded ids), greedy, up
// to 64 new tokens each (EOS ends one early on both sides; tokens are counted as generated).
// Closed loop: each stream sends its next request when the last ends; 2 × streams requests
// per level (at least 4), after one warm-up request per stream. BENCH_THREADS (default
// availableParallelism()) sets ONNX Runtime's intra-op threads and torch.set_num_threads.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata } from '@grpc/grpc-js';
import {
  DecoderClient,
  type GenerateRequest,
  type GenerateResponse,
} from '../../../proto/gen/loupe/v1/decoder.js';
import { seededUniform, writeTinyModel } from '../../model/index.js';
import { clientChannelOptions, packageRoot, startBenchService } from '../../runtime/index.js';

const THREADS = Number(process.env.BENCH_THREADS ?? availableParallelism());
const STREAMS = [1, 4, 16];
const PROMPT_LENGTHS = [64, 128, 192, 256];
const MAX_NEW_TOKENS = 64;
const root = packageRoot();

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function prompts(vocab: number): number[][] {
  const next = seededUniform(7);
  // BOS, then ids clear of the special tokens at the top of the tiny vocabulary.
  return PROMPT_LENGTHS.map((n) => [
    1,
    ...Array.from({ length: n - 1 }, () => 3 + Math.floor(next() * (vocab - 10))),
  ]);
}

async function startDecoder(modelDir: string) {
  const service = await startBenchService('decoder', {
    LOUPE_MODEL_DIR: modelDir,
    LOUPE_DECODER_HOST: '127.0.0.1',
    LOUPE_DECODER_PORT: '0',
    LOUPE_DECODER_METRICS_PORT: '0',
    LOUPE_DECODER_THREADS: String(THREADS),
    LOUPE_DECODER_MAX_RUNNING: String(Math.max(...STREAMS)),
    LOUPE_DECODER_MAX_CONTEXT: String(Math.max(...PROMPT_LENGTHS) + MAX_NEW_TOKENS),
    // The levels resend the same four prompts: with prefix caching their prefills would be
    // hits, and the figures no longer comparable with the ones before it (docs/decoder-engine.md).
    LOUPE_DECODER_PREFIX_CACHE_BYTES: '0',
  });
  return { address: `127.0.0.1:${Number(service.ready.grpcPort)}`, stop: service.stop };
}

/** Generates one request; resolves with its token count and time to first token (ms). */
function generate(client: DecoderClient, request: GenerateRequest) {
  return new Promise<{ tokens: number; ttftMs: number }>((resolve, reject) => {
    const started = performance.now();
    let ttftMs = 0;
    let tokens = 0;
    const stream = client.generate(request, new Metadata(), {
      deadline: new Date(Date.now() + 600_000),
    });
    stream.on('data', (m: GenerateResponse) => {
      if (m.event?.$case !== 'token') return;
      if (tokens++ === 0) ttftMs = performance.now() - started;
    });
    stream.on('error', reject);
    stream.on('end', () => resolve({ tokens, ttftMs }));
  });
}

interface Level {
  tokensPerS: number;
  ttftP50: number;
  ttftP99: number;
  requests: number;
}

async function measure(
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
        tokens += r.tokens;
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

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-bench-decoder-'));
  try {
    const modelDir = join(dir, 'small');
    writeTinyModel({ out: modelDir, size: 'small', seed: 0 });
    const ids = prompts(461);
    const requests: GenerateRequest[] = ids.map((promptTokenIds) => ({
      promptTokenIds,
      images: [],
      sampling: { temperature: 0 },
      stopTokenIds: [],
      maxNewTokens: MAX_NEW_TOKENS,
      logprobs: false,
      topLogprobs: 0,
    }));
    const load = loadavg()[0]!;
    process.stdout.write(
      `decoder benchmark: small checkpoint (seed 0), prompts of ${PROMPT_LENGTHS.join('/')} tokens, greedy, up to ${MAX_NEW_TOKENS} new tokens, ${THREADS} threads\n` +
        `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, node ${process.version}\n` +
        (load > 0.5 * cpus().length
          ? `warning: 1-minute load average ${load.toFixed(2)} before starting: other work skews the figures\n`
          : '') +
        '\n',
    );

    const service = await startDecoder(modelDir);
    const client = new DecoderClient(
      service.address,
      credentials.createInsecure(),
      clientChannelOptions(64 << 20),
    );
    const levels: Record<number, Level> = {};
    try {
      for (const streams of STREAMS) levels[streams] = await measure(client, requests, streams);
    } finally {
      client.close();
      await service.stop();
    }

    let reference: { tokensPerS: number } | undefined;
    const python = referencePython();
    if (python) {
      const inputs = join(dir, 'inputs.json');
      writeFileSync(inputs, JSON.stringify({ prompts: ids, max_new_tokens: MAX_NEW_TOKENS }));
      const out = execFileSync(
        python,
        [
          join(root, 'test', 'fixtures', 'model', 'reference_decoder_bench.py'),
          '--model',
          modelDir,
          '--threads',
          String(THREADS),
          '--inputs',
          inputs,
        ],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 16 << 20 },
      );
      const r = JSON.parse(out.trim().split('\n').at(-1)!) as { tokens: number; seconds: number };
      reference = { tokensPerS: r.tokens / r.seconds };
    }

    const row = (cells: string[]) =>
      cells.map((c, i) => (i === 0 ? c.padEnd(10) : c.padStart(14))).join('') + '\n';
    process.stdout.write(
      row(['streams', 'tokens/s', 'TTFT p50 ms', 'TTFT p99 ms', 'vs 1 stream', 'vs reference']),
    );
    for (const streams of STREAMS) {
      const l = levels[streams]!;
      process.stdout.write(
        row([
          String(streams),
          l.tokensPerS.toFixed(1),
          l.ttftP50.toFixed(0),
          l.ttftP99.toFixed(0),
          `${(l.tokensPerS / levels[1]!.tokensPerS).toFixed(2)}×`,
          reference ? `${(l.tokensPerS / reference.tokensPerS).toFixed(2)}×` : 'n/a',
        ]),
      );
    }
    process.stdout.write(
      `\nreference (transformers generate, one request after another): ${reference ? `${reference.tokensPerS.toFixed(1)} tokens/s` : 'not run (no Python with transformers and torch)'}\n` +
        `goal on CPU: 16 streams >= 6× 1 stream (${(levels[16]!.tokensPerS / levels[1]!.tokensPerS).toFixed(2)}×) and >= 5× the reference's sequential throughput${reference ? ` (${(levels[16]!.tokensPerS / reference.tokensPerS).toFixed(2)}×)` : ''}.\n` +
        `1-minute load average: ${load.toFixed(2)} at the start, ${loadavg()[0]!.toFixed(2)} at the end.\n`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench:decoder failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
