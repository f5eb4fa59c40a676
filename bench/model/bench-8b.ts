// `npm run bench:8b`: idefics2-8b at its real size, 4-bit GPTQ, through the whole stack on
// this machine. Makes (or reuses) a random checkpoint of the 8b shape in .loupe/bench-8b/,
// starts preprocessor, encoder, decoder and gateway as their own processes, and prints:
//   - each stage's load time (spawn to ready) and resident memory (VmRSS, VmHWM) after load
//     and at the end;
//   - TTFT of one 980×980 JPEG through /v1/chat/completions (streamed, first content chunk),
//     image splitting off and on;
//   - decode tokens/s at 1 and 4 concurrent streams (text prompts, straight to the decoder's
//     gRPC Generate), counted while every stream is decoding (prefills excluded);
//   - the machine's memory-read bandwidth, measured in the same run, and batch-1 decode as a
//     share of the bandwidth bound: bound tokens/s = bandwidth ÷ bytes read per token (the
//     text layers' qweight + qzeros + scales, the text norms and lm_head; not embed_tokens,
//     of which a token reads one row; not g_idx, which desc_act: false never needs).
//   - the same decode rates again with int8 activations (LOUPE_DECODER_QUANT_ACTIVATIONS=int8,
//     a second decoder reusing the packed weights);
//   - on the `small` checkpoint, in-process: decode tokens/s at batch 1 of float32 against
//     4-bit GPTQ (float and int8 activations), in the same run (BENCH_8B_SMALL=0 skips it).
// Then a table and one JSON line.
//
// BENCH_8B_DIR: the checkpoint folder (default .loupe/bench-8b, .loupe/bench-8b-small);
// BENCH_8B_SHAPE: 8b (default) | small (the `loupe tiny-model` small sizes, same structure);
// BENCH_8B_BITS: 4 (default) | 8; BENCH_THREADS: intra-op threads of encoder and decoder
// (default availableParallelism()); BENCH_8B_NEW_TOKENS: tokens per decode stream (64);
// BENCH_8B_TIMEOUT_S: the deadline of each stage's load and of each request (8b: 900,
// small: 120). Every process is stopped at the end, on error and on SIGINT/SIGTERM.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { availableParallelism, cpus, freemem, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { credentials, Metadata } from '@grpc/grpc-js';
import {
  DecoderClient,
  type GenerateRequest,
  type GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import { clientChannelOptions, packageRoot } from '../../services/runtime/index.js';
import { startBenchService, type BenchService } from '../lib/bench-service.js';
import {
  convertCheckpoint,
  generateGreedy,
  loadTextModel,
  openCheckpoint,
  seededUniform,
  writeTinyModel,
} from '../../services/model/index.js';
import { readSafetensorsHeader } from '../../services/model/safetensors/index.js';
import {
  benchShapeConfig,
  readBenchMarker,
  RANDOM_GPTQ_FORMAT_VERSION,
  writeRandomGptqCheckpoint,
  type BenchMarker,
  type GptqBits,
} from './random-gptq-checkpoint.js';

const root = packageRoot();

function envChoice<T extends string>(name: string, choices: readonly T[], fallback: T): T {
  const value = process.env[name] ?? fallback;
  if (!choices.includes(value as T))
    throw new RangeError(`${name} must be one of ${choices.join(', ')}, got ${value}`);
  return value as T;
}

function envInt(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  const value = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isSafeInteger(value) || value < min)
    throw new RangeError(`${name} must be an integer >= ${min}, got ${raw}`);
  return value;
}

const SHAPE = envChoice('BENCH_8B_SHAPE', ['8b', 'small'] as const, '8b');
const BITS = Number(envChoice('BENCH_8B_BITS', ['4', '8'] as const, '4')) as GptqBits;
const GROUP_SIZE = 128;
const SEED = 0;
const SHARD_BYTES = 2_000_000_000;
const DIR =
  process.env.BENCH_8B_DIR ??
  join(root, '.loupe', SHAPE === '8b' ? 'bench-8b' : `bench-8b-${SHAPE}`) +
    (BITS === 4 ? '' : `-q${BITS}`);
const THREADS = envInt('BENCH_THREADS', availableParallelism(), 1);
const NEW_TOKENS = envInt('BENCH_8B_NEW_TOKENS', 64, 2);
const TIMEOUT_MS = envInt('BENCH_8B_TIMEOUT_S', SHAPE === '8b' ? 900 : 120, 1) * 1000;
const MODEL_ID = `idefics2-${SHAPE}-gptq-q${BITS}-random`;
const IMAGE = 'jpeg-980x980.jpg';
const TTFT_MAX_TOKENS = 4;
const PROMPT_TOKENS = 32;
const STREAMS = [1, 4];
const MAX_CONTEXT = 1024; // 5 × 64 image tokens with splitting, the prompt and the answer

/** Rejects after `ms` with a message naming what took too long. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms / 1000} s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- processes -------------------------------------------------------------------------

/** Pids of this process's children (every thread's list; Linux). */
function childPids(): Set<number> {
  const pids = new Set<number>();
  try {
    for (const task of readdirSync('/proc/self/task')) {
      const text = readFileSync(`/proc/self/task/${task}/children`, 'utf8').trim();
      for (const pid of text.split(/\s+/).filter(Boolean)) pids.add(Number(pid));
    }
  } catch {
    // not Linux
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

interface Memory {
  rssBytes: number;
  hwmBytes: number;
}

/** VmRSS and VmHWM of a process, from /proc/<pid>/status. */
function memoryOf(pid: number): Memory | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]);
    const rss = kb('VmRSS');
    const hwm = kb('VmHWM');
    return Number.isFinite(rss) && Number.isFinite(hwm)
      ? { rssBytes: rss * 1024, hwmBytes: hwm * 1024 }
      : undefined;
  } catch {
    return undefined;
  }
}

interface Stage {
  name: string;
  pid: number;
  service: BenchService;
  loadMs: number;
  afterLoad?: Memory;
  atEnd?: Memory;
  stopped?: boolean;
}

/** The stages started so far, and the means to stop them all whatever happens. */
class Stack {
  readonly stages: Stage[] = [];
  /** Children that were spawned but never said ready (a start that hung or timed out). */
  readonly #orphans = new Set<number>();
  #stopping: Promise<void> | undefined;

  /** Starts service `service` (its dist/services folder) as the stage called `name`. */
  async start(service: string, env: Record<string, string>, name = service): Promise<Stage> {
    const before = childPids();
    const started = performance.now();
    const starting = startBenchService(service, env);
    let running: BenchService;
    try {
      running = await within(starting, TIMEOUT_MS, `loading the ${name}`);
    } catch (error) {
      for (const pid of childPids()) if (!before.has(pid)) this.#orphans.add(pid);
      starting.then(
        (s) => void s.stop(),
        () => undefined,
      );
      throw error;
    }
    const loadMs = performance.now() - started;
    const pid = Number(running.ready.pid);
    const stage: Stage = { name, pid, service: running, loadMs };
    this.stages.push(stage);
    stage.afterLoad = memoryOf(pid);
    return stage;
  }

  /**
   * Stops every stage (SIGTERM, then SIGKILL after 20 s), newest first, then any child still
   * there (one still starting when a signal came); idempotent.
   */
  stop(): Promise<void> {
    return (this.#stopping ??= (async () => {
      for (const pid of this.#orphans) kill(pid, 'SIGKILL');
      for (const stage of [...this.stages].reverse()) {
        if (stage.stopped) continue;
        try {
          await within(stage.service.stop(), 20_000, `stopping the ${stage.name}`);
        } catch {
          kill(stage.pid, 'SIGKILL');
        }
      }
      const left = [...childPids()];
      for (const pid of left) kill(pid, 'SIGTERM');
      for (let waited = 0; waited < 5000 && left.some(alive); waited += 100) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      for (const pid of left) kill(pid, 'SIGKILL');
    })());
  }

  /** Stops one stage now (its memory at the end is taken first). */
  async stopStage(stage: Stage): Promise<void> {
    stage.atEnd = memoryOf(stage.pid);
    try {
      await within(stage.service.stop(), 20_000, `stopping the ${stage.name}`);
    } catch {
      kill(stage.pid, 'SIGKILL');
    }
    stage.stopped = true;
  }

  /** Last resort on exit: SIGKILL every child left, synchronously. */
  killAll(): void {
    for (const pid of new Set([...this.#orphans, ...this.stages.map((s) => s.pid), ...childPids()]))
      kill(pid, 'SIGKILL');
  }
}

// ---- memory bandwidth ------------------------------------------------------------------

// Each worker sums its own array (filled, so every page is really there) two ways: a tight
// JavaScript loop over a Float64Array, which V8 runs one scalar add at a time (on a 2-core
// Xeon VM it tops out at about half of what the memory gives), and a WebAssembly SIMD loop
// (eight 16-byte loads per iteration) over the same bytes, which reads at memory speed
// (within 10% of glibc's memchr here). Times are process-wide monotonic (hrtime), from the
// first worker's start to the last one's end.
const BANDWIDTH_WORKER = String.raw`
const { parentPort, workerData: { bytes } } = require('node:worker_threads');
const leb = (n) => { const o = []; do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; o.push(b); } while (n); return o; };
const section = (id, body) => [id, ...leb(body.length), ...body];
const name = (s) => [s.length, ...Buffer.from(s)];
// (func (param $n i32) (result i64)): 8 × i64x2 accumulators over 128 bytes an iteration.
const U = 8;
const code = [2, 1, 0x7f, U, 0x7b, 0x03, 0x40];
for (let j = 0; j < U; j++)
  code.push(0x20, 2 + j, 0x20, 1, 0xfd, 0x00, 4, ...leb(16 * j), 0xfd, 0xce, 0x01, 0x21, 2 + j);
code.push(0x20, 1, 0x41, 0x80, 0x01, 0x6a, 0x22, 1, 0x20, 0, 0x49, 0x0d, 0, 0x0b, 0x20, 2);
for (let j = 1; j < U; j++) code.push(0x20, 2 + j, 0xfd, 0xce, 0x01);
code.push(0x22, 2, 0xfd, 0x1d, 0, 0x20, 2, 0xfd, 0x1d, 1, 0x7c, 0x0b);
const wasm = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
  ...section(1, [1, 0x60, 1, 0x7f, 1, 0x7e]), ...section(3, [1, 0]), ...section(5, [1, 0, 1]),
  ...section(7, [2, ...name('mem'), 2, 0, ...name('sum'), 0, 0]),
  ...section(10, [1, ...leb(code.length), ...code])]);
let memory, simd;
try {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(wasm));
  instance.exports.mem.grow(bytes / 65536 - 1);
  memory = instance.exports.mem.buffer;
  simd = instance.exports.sum;
} catch {
  memory = new ArrayBuffer(bytes);
}
new Uint8Array(memory).fill(1);
const f64 = new Float64Array(memory);
const js = () => {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const n = f64.length;
  for (let i = 0; i < n; i += 4) { s0 += f64[i]; s1 += f64[i + 1]; s2 += f64[i + 2]; s3 += f64[i + 3]; }
  return s0 + s1 + s2 + s3;
};
parentPort.on('message', (kind) => {
  if (kind === 'simd' && !simd) return parentPort.postMessage(null);
  const t0 = process.hrtime.bigint();
  const sum = kind === 'simd' ? simd(bytes) : js();
  const t1 = process.hrtime.bigint();
  parentPort.postMessage({ t0, t1, sum: String(sum) });
});
parentPort.postMessage('ready');
`;

interface Bandwidth {
  threads: number;
  bytes: number;
  /** Best of 3, GB/s (1e9 bytes). */
  jsGBs: number;
  simdGBs: number | null;
  /** The higher of the two: what the bound uses. */
  GBs: number;
}

async function measureBandwidth(threads: number): Promise<Bandwidth> {
  const perWorker = Math.min(
    1 << 30,
    Math.max(64 << 20, Math.ceil((1 << 30) / threads / 128) * 128),
  );
  const workers = Array.from(
    { length: threads },
    () => new Worker(BANDWIDTH_WORKER, { eval: true, workerData: { bytes: perWorker } }),
  );
  try {
    await within(
      Promise.all(
        workers.map(
          (w) =>
            new Promise((resolve, reject) => {
              w.once('message', resolve);
              w.once('error', reject);
            }),
        ),
      ),
      120_000,
      'filling the bandwidth probe',
    );
    const pass = async (kind: 'js' | 'simd') => {
      const results = await within(
        Promise.all(
          workers.map(
            (w) =>
              new Promise<{ t0: bigint; t1: bigint } | null>((resolve) => {
                w.once('message', resolve);
                w.postMessage(kind);
              }),
          ),
        ),
        120_000,
        'the bandwidth probe',
      );
      if (results.some((r) => r === null)) return null;
      const ok = results as Array<{ t0: bigint; t1: bigint }>;
      const start = ok.reduce((m, r) => (r.t0 < m ? r.t0 : m), ok[0]!.t0);
      const end = ok.reduce((m, r) => (r.t1 > m ? r.t1 : m), ok[0]!.t1);
      return (perWorker * threads) / Number(end - start); // bytes per ns = GB/s
    };
    const best = async (kind: 'js' | 'simd') => {
      if ((await pass(kind)) === null) return null; // warm-up (JIT tiers)
      let top = 0;
      for (let i = 0; i < 3; i++) top = Math.max(top, (await pass(kind)) ?? 0);
      return top;
    };
    const jsGBs = (await best('js'))!;
    const simdGBs = await best('simd');
    return {
      threads,
      bytes: perWorker * threads,
      jsGBs,
      simdGBs,
      GBs: Math.max(jsGBs, simdGBs ?? 0),
    };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** The largest CPU cache of cpu0 (Linux sysfs), or null. */
function lastLevelCacheBytes(): number | null {
  let largest: number | null = null;
  try {
    const base = '/sys/devices/system/cpu/cpu0/cache';
    for (const index of readdirSync(base).filter((n) => n.startsWith('index'))) {
      const m = /^(\d+)([KMG]?)/.exec(readFileSync(join(base, index, 'size'), 'utf8').trim());
      if (!m) continue;
      const bytes = Number(m[1]) * ({ '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2]!] ?? 1);
      largest = Math.max(largest ?? 0, bytes);
    }
  } catch {
    // not Linux
  }
  return largest;
}

// ---- checkpoint ------------------------------------------------------------------------

function markerMatches(marker: BenchMarker | undefined): boolean {
  return (
    marker !== undefined &&
    marker.version === RANDOM_GPTQ_FORMAT_VERSION &&
    marker.shape === SHAPE &&
    marker.bits === BITS &&
    marker.groupSize === GROUP_SIZE &&
    marker.seed === SEED
  );
}

/** Bytes one decode step reads from the weights (see the top of the file). */
function bytesPerToken(dir: string, files: string[]): number {
  const read =
    /^(model\.text_model\.layers\.\d+\..*\.(qweight|qzeros|scales|weight)|model\.text_model\.norm\.weight|lm_head\.weight)$/;
  let bytes = 0;
  for (const file of files) {
    for (const [name, entry] of Object.entries(readSafetensorsHeader(join(dir, file)).tensors)) {
      if (read.test(name)) bytes += entry.byteLength;
    }
  }
  return bytes;
}

// ---- requests --------------------------------------------------------------------------

interface Ttft {
  split: boolean;
  ttftMs: number;
  totalMs: number;
  chunks: number;
}

/** One streamed chat request with the image; time to the first chunk with content. */
async function chatTtft(url: string, image: Buffer, split: boolean): Promise<Ttft> {
  const started = performance.now();
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    signal: AbortSignal.timeout(TIMEOUT_MS),
    body: JSON.stringify({
      model: MODEL_ID,
      stream: true,
      max_tokens: TTFT_MAX_TOKENS,
      temperature: 0,
      image_splitting: split,
      messages: [
        {
          role: 'user',
          content: [
            {
              type: 'image_url',
              image_url: { url: `data:image/jpeg;base64,${image.toString('base64')}` },
            },
            { type: 'text', text: 'What is in this picture?' },
          ],
        },
      ],
    }),
  });
  if (response.status !== 200 || !response.body)
    throw new Error(`the gateway answered ${response.status}: ${await response.text()}`);
  let ttftMs: number | undefined;
  let chunks = 0;
  let buffered = '';
  const decoder = new TextDecoder();
  for await (const bytes of response.body as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(bytes, { stream: true });
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = event
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trim())
        .join('\n');
      if (!data || data === '[DONE]') continue;
      const json = JSON.parse(data) as {
        error?: { message?: string };
        choices?: Array<{ delta?: { content?: string } }>;
      };
      if (json.error) throw new Error(`the gateway streamed an error: ${JSON.stringify(json)}`);
      if (json.choices?.[0]?.delta?.content) {
        chunks++;
        ttftMs ??= performance.now() - started;
      }
    }
  }
  if (ttftMs === undefined) throw new Error('the stream ended without any content');
  return { split, ttftMs, totalMs: performance.now() - started, chunks };
}

/** Token arrival times (ms) of one Generate call. */
function generate(client: DecoderClient, request: GenerateRequest): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const times: number[] = [];
    const stream = client.generate(request, new Metadata(), {
      deadline: new Date(Date.now() + TIMEOUT_MS),
    });
    stream.on('data', (m: GenerateResponse) => {
      if (m.event?.$case === 'token') times.push(performance.now());
    });
    stream.on('error', reject);
    stream.on('end', () => resolve(times));
  });
}

interface Decode {
  streams: number;
  /** Tokens/s (all streams together) while every stream was decoding. */
  tokensPerS: number;
  tokens: number;
  windowMs: number;
}

/** `streams` requests at once; tokens arriving after the last first token and by the first end. */
async function decodeRate(
  client: DecoderClient,
  prompts: number[][],
  streams: number,
): Promise<Decode> {
  const request = (ids: number[], maxNewTokens: number): GenerateRequest => ({
    promptTokenIds: ids,
    images: [],
    sampling: { temperature: 0 },
    stopTokenIds: [],
    logitBias: {},
    responseFormat: undefined,
    maxNewTokens,
    logprobs: false,
    topLogprobs: 0,
  });
  const runs = await Promise.all(
    Array.from({ length: streams }, (_, i) =>
      generate(client, request(prompts[i % prompts.length]!, NEW_TOKENS)),
    ),
  );
  if (runs.some((t) => t.length < 2))
    throw new Error(`a stream ended after ${Math.min(...runs.map((t) => t.length))} token(s)`);
  const from = Math.max(...runs.map((t) => t[0]!));
  const to = Math.min(...runs.map((t) => t.at(-1)!));
  let tokens = 0;
  for (const t of runs) tokens += t.filter((x) => x > from && x <= to).length;
  if (to <= from || tokens === 0) {
    // One stream ended before another began decoding: fall back to each stream's own span.
    const total = runs.reduce((n, t) => n + t.length - 1, 0);
    const span = Math.max(...runs.map((t) => t.at(-1)!)) - Math.min(...runs.map((t) => t[0]!));
    return { streams, tokensPerS: (total / span) * 1000, tokens: total, windowMs: span };
  }
  return { streams, tokensPerS: (tokens / (to - from)) * 1000, tokens, windowMs: to - from };
}

/** Decode rates at each of STREAMS through one decoder stage, after a warm-up request. */
async function measureDecodes(
  stage: Stage,
  label: 'float' | 'int8',
): Promise<{ decodes: Decode[]; weightFormat: string | null }> {
  const client = new DecoderClient(
    `127.0.0.1:${String(stage.service.ready.grpcPort)}`,
    credentials.createInsecure(),
    clientChannelOptions(64 << 20),
  );
  const decodes: Decode[] = [];
  let weightFormat: string | null = null;
  try {
    const info = await new Promise<Record<string, unknown>>((resolve, reject) =>
      client.info({}, new Metadata(), { deadline: new Date(Date.now() + 30_000) }, (e, r) =>
        e ? reject(e) : resolve(r as unknown as Record<string, unknown>),
      ),
    );
    if (typeof info.weightFormat === 'string' && info.weightFormat) {
      weightFormat = info.weightFormat;
      process.stdout.write(
        `decoder weights: ${weightFormat}${typeof info.weightBytes === 'number' ? `, ${(info.weightBytes / GB).toFixed(3)} GB as loaded` : ''}, ${label} activations\n`,
      );
    }
    const next = seededUniform(7);
    // BOS, then ids of the tiny tokenizer's pieces (clear of its special tokens).
    const prompts = Array.from({ length: 4 }, () => [
      1,
      ...Array.from({ length: PROMPT_TOKENS - 1 }, () => 3 + Math.floor(next() * 450)),
    ]);
    await generate(client, {
      promptTokenIds: prompts[0]!,
      images: [],
      sampling: { temperature: 0 },
      stopTokenIds: [],
      logitBias: {},
      responseFormat: undefined,
      maxNewTokens: 2,
      logprobs: false,
      topLogprobs: 0,
    }); // warm-up
    for (const streams of STREAMS) {
      const d = await decodeRate(client, prompts, streams);
      decodes.push(d);
      process.stdout.write(
        `decode (${label} activations), ${streams} stream(s): ${d.tokensPerS.toFixed(2)} tokens/s (${d.tokens} tokens in ${(d.windowMs / 1000).toFixed(1)} s)\n`,
      );
    }
  } finally {
    client.close();
  }
  return { decodes, weightFormat };
}

// ---- small checkpoint: float32 against 4-bit, in-process ---------------------------------

interface SmallDecode {
  weights: string;
  activations: 'float' | 'int8';
  weightBytes: number;
  tokensPerS: number;
}

/**
 * Batch-1 greedy decode on the `small` random checkpoint, float32 and 4-bit GPTQ (group 128,
 * symmetric) with float and int8 activations, one after another in this process: a 64-token
 * prompt, 128 new tokens, best of three runs after a warm-up.
 */
async function smallComparison(): Promise<SmallDecode[]> {
  const base = join(root, '.loupe', 'bench-8b-small-float32');
  const quant = join(root, '.loupe', 'bench-8b-small-gptq4');
  if (!existsSync(join(base, 'config.json'))) writeTinyModel({ out: base, seed: 0, size: 'small' });
  if (!existsSync(join(quant, 'config.json'))) {
    convertCheckpoint({
      from: base,
      to: quant,
      quantize: { bits: 4, groupSize: 128, sym: true },
      force: true,
    });
  }
  const next = seededUniform(11);
  const ids = [1, ...Array.from({ length: 63 }, () => 3 + Math.floor(next() * 450))];
  const results: SmallDecode[] = [];
  for (const [dir, activations] of [
    [base, 'float'],
    [quant, 'float'],
    [quant, 'int8'],
  ] as const) {
    const model = await loadTextModel(openCheckpoint(dir), {
      session: { intraOpThreads: THREADS },
      quantized: { int8Activations: activations === 'int8' },
    });
    try {
      await generateGreedy(model, [{ ids }], { maxNewTokens: 16, eosTokenIds: [] });
      let best = 0;
      for (let run = 0; run < 3; run++) {
        const r = await generateGreedy(model, [{ ids }], { maxNewTokens: 128, eosTokenIds: [] });
        best = Math.max(best, (r.decodeSteps / r.decodeMs) * 1000);
      }
      results.push({
        weights: model.graph.weightFormat,
        activations,
        weightBytes: model.graph.weightBytes,
        tokensPerS: best,
      });
    } finally {
      await model.release();
    }
  }
  return results;
}

// ---- main ------------------------------------------------------------------------------

const GB = 1e9;
const MiB = 1024 * 1024;
const stack = new Stack();
let signalled = false;

async function main(): Promise<void> {
  const load = loadavg()[0]!;
  process.stdout.write(
    `bench:8b: idefics2-${SHAPE} shape, random ${BITS}-bit GPTQ (group ${GROUP_SIZE}), ${THREADS} threads\n` +
      `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, ${(totalmem() / GB).toFixed(1)} GB memory (${(freemem() / GB).toFixed(1)} GB free), node ${process.version}; 1-minute load average ${load.toFixed(2)}\n` +
      (load > 0.5 * cpus().length
        ? 'warning: the machine is busy: other work skews the figures\n'
        : ''),
  );

  // 1. The checkpoint.
  let marker = readBenchMarker(DIR);
  let makeSeconds: number | null = null;
  if (markerMatches(marker)) {
    process.stdout.write(`checkpoint: reusing ${DIR}\n`);
  } else {
    process.stdout.write(`checkpoint: making ${DIR} ...\n`);
    const summary = writeRandomGptqCheckpoint({
      out: DIR,
      config: benchShapeConfig(SHAPE),
      bits: BITS,
      groupSize: GROUP_SIZE,
      seed: SEED,
      shardBytes: SHARD_BYTES,
      shape: SHAPE,
    });
    makeSeconds = summary.ms / 1000;
    marker = summary;
    process.stdout.write(
      `checkpoint: made in ${makeSeconds.toFixed(1)} s (${(summary.totalBytes / GB).toFixed(2)} GB in ${summary.files.length} file(s); peak RSS of this process ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB)\n`,
    );
  }
  const checkpoint = marker!;
  const perToken = bytesPerToken(DIR, checkpoint.files);

  // Stop everything on a signal from here on (the checkpoint write is synchronous: a signal
  // during it ends the process, leaving only DIR.tmp, which the next run replaces).
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      signalled = true;
      process.stderr.write(`bench:8b: ${signal}, stopping the services\n`);
      void stack.stop().finally(() => process.exit(130));
    });
  }
  process.once('exit', () => stack.killAll());

  // 2. Memory bandwidth, while nothing else of ours runs.
  const bandwidth = await measureBandwidth(availableParallelism());
  process.stdout.write(
    `memory read bandwidth (${bandwidth.threads} workers, ${(bandwidth.bytes / MiB).toFixed(0)} MiB): JS loop ${bandwidth.jsGBs.toFixed(1)} GB/s, WebAssembly SIMD ${bandwidth.simdGBs?.toFixed(1) ?? 'n/a'} GB/s\n`,
  );

  // 2b. float32 against 4-bit on the small checkpoint, in-process, before any stage runs.
  const small = process.env.BENCH_8B_SMALL === '0' ? [] : await smallComparison();
  for (const r of small) {
    process.stdout.write(
      `small checkpoint, batch 1: ${r.weights} (${r.activations} activations, ${(r.weightBytes / MiB).toFixed(1)} MiB of text weights): ${r.tokensPerS.toFixed(1)} tokens/s (${(r.tokensPerS / small[0]!.tokensPerS).toFixed(2)}× float32)\n`,
    );
  }

  // 3. The stack, one stage at a time so each load time is its own.
  const common = { LOUPE_MODEL_DIR: DIR, LOUPE_MODEL_ID: MODEL_ID };
  const deadline = String(TIMEOUT_MS);
  const pre = await stack.start('preprocessor', {
    ...common,
    LOUPE_PREPROCESSOR_HOST: '127.0.0.1',
    LOUPE_PREPROCESSOR_PORT: '0',
    LOUPE_PREPROCESSOR_METRICS_PORT: '0',
    LOUPE_PREPROCESSOR_DEFAULT_DEADLINE_MS: deadline,
  });
  process.stdout.write(`preprocessor ready in ${(pre.loadMs / 1000).toFixed(1)} s\n`);
  const enc = await stack.start('encoder', {
    ...common,
    LOUPE_ENCODER_HOST: '127.0.0.1',
    LOUPE_ENCODER_PORT: '0',
    LOUPE_ENCODER_METRICS_PORT: '0',
    LOUPE_ENCODER_THREADS: String(THREADS),
    LOUPE_ENCODER_CACHE_BYTES: '0', // every image is encoded
    LOUPE_ENCODER_DEFAULT_DEADLINE_MS: deadline,
  });
  process.stdout.write(`encoder ready in ${(enc.loadMs / 1000).toFixed(1)} s\n`);
  // The decoder repacks GPTQ weights for ONNX Runtime into <checkpoint>/.loupe-cache on its
  // first load and reuses them after: say which this load was.
  const packedBefore = existsSync(join(DIR, '.loupe-cache'))
    ? readdirSync(join(DIR, '.loupe-cache')).some((n) => n.endsWith('.json'))
    : false;
  const decoderEnv = {
    ...common,
    LOUPE_DECODER_HOST: '127.0.0.1',
    LOUPE_DECODER_PORT: '0',
    LOUPE_DECODER_METRICS_PORT: '0',
    LOUPE_DECODER_THREADS: String(THREADS),
    LOUPE_DECODER_MAX_RUNNING: String(Math.max(...STREAMS)),
    LOUPE_DECODER_MAX_CONTEXT: String(MAX_CONTEXT),
    LOUPE_DECODER_DEFAULT_DEADLINE_MS: deadline,
  };
  const dec = await stack.start('decoder', decoderEnv);
  process.stdout.write(
    `decoder ready in ${(dec.loadMs / 1000).toFixed(1)} s (${packedBefore ? 'packed weights reused' : 'first load: packed weights made'})\n`,
  );
  const gw = await stack.start('gateway', {
    ...common,
    LOUPE_GATEWAY_HOST: '127.0.0.1',
    LOUPE_GATEWAY_PORT: '0',
    LOUPE_GATEWAY_METRICS_PORT: '0',
    LOUPE_PREPROCESSOR_ENDPOINTS: `127.0.0.1:${String(pre.service.ready.grpcPort)}`,
    LOUPE_ENCODER_ENDPOINTS: `127.0.0.1:${String(enc.service.ready.grpcPort)}`,
    LOUPE_DECODER_ENDPOINTS: `127.0.0.1:${String(dec.service.ready.grpcPort)}`,
    LOUPE_GATEWAY_REQUEST_TIMEOUT_MS: deadline,
  });
  process.stdout.write(`gateway ready in ${(gw.loadMs / 1000).toFixed(1)} s\n`);

  // 4. TTFT through the gateway: a new image each time (trailing bytes the JPEG decoder
  //    ignores), so nothing is cached anywhere.
  const url = `http://127.0.0.1:${String(gw.service.ready.httpPort)}/v1/chat/completions`;
  const jpeg = readFileSync(join(root, 'test', 'fixtures', 'images', IMAGE));
  const ttfts: Ttft[] = [];
  for (const [i, split] of [false, true].entries()) {
    const t = await chatTtft(url, Buffer.concat([jpeg, Buffer.alloc(i + 1)]), split);
    ttfts.push(t);
    process.stdout.write(
      `TTFT, splitting ${split ? 'on ' : 'off'}: ${t.ttftMs.toFixed(0)} ms (whole request ${t.totalMs.toFixed(0)} ms)\n`,
    );
  }

  // 5. Decode rate, straight to the decoder: float activations, then int8 activations in a
  //    second decoder (the packed weights are reused, so it loads faster).
  const first = await measureDecodes(dec, 'float');
  const weightFormat = first.weightFormat;
  const decodes = first.decodes;
  await stack.stopStage(dec);
  const decInt8 = await stack.start(
    'decoder',
    { ...decoderEnv, LOUPE_DECODER_QUANT_ACTIVATIONS: 'int8' },
    'decoder-int8',
  );
  process.stdout.write(
    `decoder (int8 activations) ready in ${(decInt8.loadMs / 1000).toFixed(1)} s\n`,
  );
  const decodesInt8 = (await measureDecodes(decInt8, 'int8')).decodes;

  for (const stage of stack.stages) if (!stage.stopped) stage.atEnd = memoryOf(stage.pid);
  await stack.stop();

  // 6. Report.
  const mib = (m: Memory | undefined, key: keyof Memory) => (m ? (m[key] / MiB).toFixed(0) : 'n/a');
  const row = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(14) : c.padStart(13))).join('') + '\n';
  // The stack as served: the four stages with one decoder (float or int8 activations; the two
  // never ran at once), whichever of the two sums is larger.
  const sumWith = (decoder: string, f: (s: Stage) => number | undefined) =>
    stack.stages
      .filter((s) => !s.name.startsWith('decoder') || s.name === decoder)
      .reduce((n, s) => n + (f(s) ?? 0), 0);
  const sum = (f: (s: Stage) => number | undefined) =>
    Math.max(sumWith('decoder', f), sumWith('decoder-int8', f));
  const batch1 = decodes.find((d) => d.streams === 1)!.tokensPerS;
  const batch1Int8 = decodesInt8.find((d) => d.streams === 1)!.tokensPerS;
  const boundTokensPerS = (bandwidth.GBs * GB) / perToken;
  const llc = lastLevelCacheBytes();
  let out = '\n' + row(['stage', 'load s', 'RSS MiB', 'HWM MiB', 'RSS end MiB', 'HWM end MiB']);
  for (const s of stack.stages) {
    out += row([
      s.name,
      (s.loadMs / 1000).toFixed(1),
      mib(s.afterLoad, 'rssBytes'),
      mib(s.afterLoad, 'hwmBytes'),
      mib(s.atEnd, 'rssBytes'),
      mib(s.atEnd, 'hwmBytes'),
    ]);
  }
  out += row([
    'stack total',
    (sum((s) => s.loadMs) / 1000).toFixed(1),
    (sum((s) => s.afterLoad?.rssBytes) / MiB).toFixed(0),
    (sum((s) => s.afterLoad?.hwmBytes) / MiB).toFixed(0),
    (sum((s) => s.atEnd?.rssBytes) / MiB).toFixed(0),
    (sum((s) => s.atEnd?.hwmBytes) / MiB).toFixed(0),
  ]);
  out +=
    `\nTTFT (${IMAGE}, streamed, first content chunk): ` +
    ttfts.map((t) => `splitting ${t.split ? 'on' : 'off'} ${t.ttftMs.toFixed(0)} ms`).join(', ') +
    '\n' +
    `decode (${PROMPT_TOKENS}-token prompts, ${NEW_TOKENS} new tokens, greedy): ` +
    decodes.map((d) => `${d.streams} stream(s) ${d.tokensPerS.toFixed(2)} tokens/s`).join(', ') +
    '; int8 activations: ' +
    decodesInt8
      .map((d) => `${d.streams} stream(s) ${d.tokensPerS.toFixed(2)} tokens/s`)
      .join(', ') +
    '\n' +
    `memory read bandwidth: ${bandwidth.GBs.toFixed(1)} GB/s (JS loop ${bandwidth.jsGBs.toFixed(1)}, WebAssembly SIMD ${bandwidth.simdGBs?.toFixed(1) ?? 'n/a'})\n` +
    `weights read per token: ${(perToken / GB).toFixed(3)} GB → bound ${boundTokensPerS.toFixed(2)} tokens/s; batch 1 reaches ${((batch1 / boundTokensPerS) * 100).toFixed(1)}% of it (int8 activations: ${((batch1Int8 / boundTokensPerS) * 100).toFixed(1)}%)\n` +
    (llc !== null && perToken < llc
      ? `note: those weights fit in the ${(llc / MiB).toFixed(0)} MiB last-level cache, so memory bandwidth does not bound this shape\n`
      : '');
  process.stdout.write(out);
  process.stdout.write(
    JSON.stringify({
      bench: 'bench-8b',
      shape: SHAPE,
      bits: BITS,
      groupSize: GROUP_SIZE,
      threads: THREADS,
      checkpoint: { dir: DIR, bytes: checkpoint.totalBytes, madeSeconds: makeSeconds },
      stages: Object.fromEntries(
        stack.stages.map((s) => [
          s.name,
          {
            loadSeconds: s.loadMs / 1000,
            rssAfterLoadBytes: s.afterLoad?.rssBytes ?? null,
            hwmAfterLoadBytes: s.afterLoad?.hwmBytes ?? null,
            rssEndBytes: s.atEnd?.rssBytes ?? null,
            hwmEndBytes: s.atEnd?.hwmBytes ?? null,
          },
        ]),
      ),
      totalLoadSeconds: sum((s) => s.loadMs) / 1000,
      totalRssEndBytes: sum((s) => s.atEnd?.rssBytes),
      totalHwmEndBytes: sum((s) => s.atEnd?.hwmBytes),
      ttftMs: Object.fromEntries(ttfts.map((t) => [t.split ? 'splitOn' : 'splitOff', t.ttftMs])),
      decodeTokensPerS: Object.fromEntries(decodes.map((d) => [String(d.streams), d.tokensPerS])),
      decodeInt8TokensPerS: Object.fromEntries(
        decodesInt8.map((d) => [String(d.streams), d.tokensPerS]),
      ),
      small,
      bandwidthGBs: { js: bandwidth.jsGBs, simd: bandwidth.simdGBs, used: bandwidth.GBs },
      decoderWeightFormat: weightFormat,
      decoderPackedWeightsReused: packedBefore,
      lastLevelCacheBytes: llc,
      bytesPerToken: perToken,
      boundTokensPerS,
      batch1ShareOfBound: batch1 / boundTokensPerS,
      batch1Int8ShareOfBound: batch1Int8 / boundTokensPerS,
    }) + '\n',
  );
}

main()
  .catch(async (error: unknown) => {
    if (signalled) return; // the signal handler stops everything and exits
    process.stderr.write(
      `bench:8b failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    await stack.stop();
    process.exitCode = 1;
  })
  .finally(() => {
    // Nothing may keep the process alive (a hung stop, a stray handle).
    setTimeout(() => process.exit(), 1000).unref();
  });
