// `npm run bench:convert`: `loupe convert --bits 4` on an idefics2-8b-shaped float32 checkpoint
// (33.6 GB of random weights, written to .loupe/bench-8b-float32 and removed afterwards unless
// BENCH_CONVERT_KEEP=1), as a user runs it: a child process whose peak resident memory (the
// kernel's maxrss, printed by the command) is set beside the largest tensor it streams, to
// show that memory stays at about one tensor plus a fixed overhead. Prints the time to make
// the input, the conversion's time and throughput, and one JSON line.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../../services/runtime/index.js';
import { expectedTensors, parseIdefics2Config } from '../../services/model/index.js';
import {
  benchShapeConfig,
  readBenchMarker,
  writeRandomGptqCheckpoint,
} from './random-gptq-checkpoint.js';

const root = packageRoot();
const GB = 1e9;
const MiB = 1024 * 1024;
const input = join(root, '.loupe', 'bench-8b-float32');
const output = join(root, '.loupe', 'bench-8b-converted-gptq4');

function main(): void {
  const load = loadavg()[0]!;
  process.stdout.write(
    `bench:convert: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores; 1-minute load average ${load.toFixed(2)}\n`,
  );
  const config = benchShapeConfig('8b');
  let makeSeconds: number | null = null;
  const marker = readBenchMarker(input);
  if (marker?.float && marker.shape === '8b') {
    process.stdout.write(`input: reusing ${input}\n`);
  } else {
    process.stdout.write(`input: writing an 8b-shaped float32 checkpoint to ${input} ...\n`);
    const made = writeRandomGptqCheckpoint({
      out: input,
      config,
      bits: 4,
      groupSize: 128,
      seed: 0,
      shardBytes: 5_000_000_000,
      shape: '8b',
      float: true,
    });
    makeSeconds = made.ms / 1000;
    process.stdout.write(
      `input: ${(made.totalBytes / GB).toFixed(2)} GB in ${made.files.length} shards, made in ${makeSeconds.toFixed(1)} s\n`,
    );
  }
  const largest = Math.max(
    ...[...expectedTensors(parseIdefics2Config(config)).values()].map(
      (shape) => shape.reduce((a, b) => a * b, 1) * 4,
    ),
  );
  rmSync(output, { recursive: true, force: true });
  const started = performance.now();
  const stdout = execFileSync(
    process.execPath,
    [
      join(root, 'bin', 'loupe.js'),
      'convert',
      '--model',
      input,
      '--out',
      output,
      '--bits',
      '4',
      '--group-size',
      '128',
      '--sym',
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 },
  );
  const seconds = (performance.now() - started) / 1000;
  const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
    bytes: number;
    sourceBytes: number;
    peakRssBytes: number;
    files: string[];
  };
  process.stdout.write(
    `convert --bits 4 --group-size 128 --sym: ${(summary.sourceBytes / GB).toFixed(2)} GB -> ${(summary.bytes / GB).toFixed(2)} GB in ${summary.files.length} shards, ${seconds.toFixed(1)} s (${(summary.sourceBytes / GB / seconds).toFixed(2)} GB/s read)\n` +
      `peak resident memory ${(summary.peakRssBytes / MiB).toFixed(0)} MiB; the largest tensor is ${(largest / MiB).toFixed(0)} MiB (float32)\n`,
  );
  process.stdout.write(
    JSON.stringify({
      bench: 'bench-convert',
      inputBytes: summary.sourceBytes,
      outputBytes: summary.bytes,
      makeInputSeconds: makeSeconds,
      convertSeconds: seconds,
      peakRssBytes: summary.peakRssBytes,
      largestTensorBytes: largest,
      loadAverage: load,
    }) + '\n',
  );
  rmSync(output, { recursive: true, force: true });
  if (process.env.BENCH_CONVERT_KEEP !== '1') rmSync(input, { recursive: true, force: true });
}

main();
