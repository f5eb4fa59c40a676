// `node dist/bench/decoder/bench-prefix-kv.js` (after a build): what a prefix hit costs
// with KV in slots of maximum context (ort-runner.ts), against what it saves and against the
// alternative, a block table. On the `small` random checkpoint (8 layers, 2 KV heads of 64,
// float32: 8 KiB of KV per token), with OrtModelRunner itself:
//
//   - copy-in: loading N cached tokens' blocks into a slot (a step of loads only);
//   - prefill: computing those N tokens instead (what the hit saves), in chunks of 512;
//   - block table: GroupQueryAttention on CPU reads each sequence's past as one contiguous
//     buffer, so with KV in shared blocks every step would first gather every running
//     sequence's whole context into one: the same copies, streams × context tokens per step,
//     beside the decode step they would precede.
//
// BENCH_THREADS (default availableParallelism()) sets ONNX Runtime's intra-op threads. Numbers
// are medians of BENCH_REPEATS (default 7) runs after one warm-up.
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTextModel, openCheckpoint, writeTinyModel } from '../../services/model/index.js';
import {
  BLOCK_TOKENS,
  type BlockCopy,
  type RunnerStep,
} from '../../services/decoder/model-runner.js';
import { OrtModelRunner, kvBytesPerToken } from '../../services/decoder/ort-runner.js';

const THREADS = Number(process.env.BENCH_THREADS ?? availableParallelism());
const REPEATS = Number(process.env.BENCH_REPEATS ?? 7);
const STREAMS = 16;
const CONTEXT = 2048;

async function median(run: () => Promise<unknown>): Promise<number> {
  await run();
  const times: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const started = performance.now();
    await run();
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

// The whole context as span: the views this measures are of slots of maximum context.
const empty: RunnerStep = {
  loads: [],
  prefill: [],
  decode: [],
  saves: [],
  span: CONTEXT,
  greedy: false,
};

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-bench-prefix-kv-'));
  try {
    const modelDir = join(dir, 'small');
    writeTinyModel({ out: modelDir, size: 'small', seed: 0 });
    const model = await loadTextModel(openCheckpoint(modelDir), {
      session: { executionProvider: 'cpu', intraOpThreads: THREADS },
    });
    const runner = new OrtModelRunner(model, {
      slots: STREAMS,
      context: CONTEXT,
      cacheBlocks: (STREAMS * CONTEXT) / BLOCK_TOKENS,
    });
    const perToken = kvBytesPerToken(model.graph);
    const load = loadavg()[0]!;
    process.stdout.write(
      `prefix KV: small checkpoint, ${perToken} bytes of KV per token, ${THREADS} threads, median of ${REPEATS}\n` +
        `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, 1-minute load ${load.toFixed(2)}\n\n`,
    );
    /** Copies of `tokens` tokens' blocks into slot `slot` (block b → position 16 b). */
    const loads = (slot: number, tokens: number, firstBlock = 0): BlockCopy[] =>
      Array.from({ length: tokens / BLOCK_TOKENS }, (_, b) => ({
        block: firstBlock + b,
        slot,
        position: b * BLOCK_TOKENS,
      }));
    const prompt = (n: number) => Array.from({ length: n }, (_, i) => 3 + ((i * 31) % 400));

    process.stdout.write('hit of N tokens: copy-in vs computing them\n');
    process.stdout.write(
      'N'.padEnd(8) + 'copy-in ms'.padStart(12) + 'prefill ms'.padStart(12) + '\n',
    );
    for (const n of [256, 1024, 2000 - (2000 % BLOCK_TOKENS)]) {
      const copy = await median(() => runner.run({ ...empty, loads: loads(0, n) }));
      const prefill = await median(async () => {
        for (let start = 0; start < n; start += 512) {
          const length = Math.min(512, n - start);
          await runner.run({
            ...empty,
            prefill: [
              {
                slot: 0,
                start,
                tokens: prompt(n).slice(start, start + length),
                imageRows: new Float32Array(0),
                sample: start + length === n,
              },
            ],
          });
        }
      });
      process.stdout.write(
        String(n).padEnd(8) + copy.toFixed(2).padStart(12) + prefill.toFixed(1).padStart(12) + '\n',
      );
    }

    process.stdout.write(
      `\n${STREAMS}-stream decode step at context L, and a block table's gather before it\n`,
    );
    process.stdout.write(
      'L'.padEnd(8) +
        'decode ms'.padStart(12) +
        'gather ms'.padStart(12) +
        'overhead'.padStart(12) +
        '\n',
    );
    for (const context of [320, 1024, CONTEXT - BLOCK_TOKENS]) {
      const decode = await median(() =>
        runner.run({
          ...empty,
          decode: Array.from({ length: STREAMS }, (_, slot) => ({
            slot,
            position: context - 1,
            token: 5,
          })),
        }),
      );
      const gather = await median(() =>
        runner.run({
          ...empty,
          loads: Array.from({ length: STREAMS }, (_, slot) =>
            loads(slot, context - (context % BLOCK_TOKENS), (slot * CONTEXT) / BLOCK_TOKENS),
          ).flat(),
        }),
      );
      process.stdout.write(
        String(context).padEnd(8) +
          decode.toFixed(2).padStart(12) +
          gather.toFixed(2).padStart(12) +
          `${((100 * gather) / decode).toFixed(0)}%`.padStart(12) +
          '\n',
      );
    }
    process.stdout.write(`\n1-minute load average at the end: ${loadavg()[0]!.toFixed(2)}\n`);
    await runner.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench-prefix-kv failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
