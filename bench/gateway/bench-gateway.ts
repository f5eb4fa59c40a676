// `npm run bench:gateway`: what the stack adds. On the `small` random checkpoint: the latency
// of a 1-image, 16-token chat request through gateway → preprocessor → encoder → decoder
// (four processes, real HTTP and gRPC on loopback, a new image each time so no cache helps),
// beside the same work in-process (preprocess, encode, greedy generation with sessions
// already loaded), in the same run; then the gateway's throughput for requests whose image
// the encoder has cached, at concurrency 8; then a small text request's p50/p99 idle and
// while one client sends maximal prompts back to back (as many characters as the gateway
// admits; they are refused once tokenized, for overflowing the context), the goal being a p99
// under attack within 1.5× of idle; then the same under each of issue 18's hostile drills, one
// phase each (attacks.ts: a cancel storm, oversized messages, costly decodes, gRPC inputs no
// gateway sends, foreign hosts and bodies, slow readers), and a table of every phase.
// BENCH_THREADS sets every session's threads; BENCH_SMALL_SAMPLES the small requests timed in
// each phase (default 200). BENCH_LAYOUT=pods runs the stages as a deployment places them,
// on CPUs of their own (see LAYOUT below); the default, `shared`, as `npm start` does.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  buildVisionGraph,
  createSession,
  encodeImages,
  eosTokenIds,
  expandImagePrompt,
  generateGreedy,
  loadChatTemplate,
  loadImageProcessorConfig,
  loadTextModel,
  loadTokenizer,
  openCheckpoint,
  preprocessImage,
  writeTinyModel,
} from '../../services/model/index.js';
import sharp from 'sharp';
import { packageRoot } from '../../services/runtime/index.js';
import { startBenchService, type BenchService } from '../lib/bench-service.js';
import { gatewayEnvSchema } from '../../services/gateway/config.js';
import { preprocessorEnvSchema } from '../../services/preprocessor/config.js';
import {
  attacks as drills,
  startAttack,
  untilIdle,
  type AttackName,
  type Target,
} from './attacks.js';

// Where the processes run. `shared`: every stage and the bench's clients on every CPU, as
// `npm start` runs them. `pods`: as the chart deploys them, each stage with CPUs of its own,
// which one machine imitates by affinity — the text path (gateway, decoder) on the first
// half of the CPUs; the image stages (preprocessor, encoder) and the bench's own clients
// (the measured one, and the attackers, which stand for other machines) on the second half.
// On two cores that is one core each side, so every session then runs one thread.
const LAYOUT = process.env.BENCH_LAYOUT ?? 'shared';
if (LAYOUT !== 'shared' && LAYOUT !== 'pods')
  throw new Error(`BENCH_LAYOUT must be shared or pods, not ${LAYOUT}`);
const CPUS = availableParallelism();
if (LAYOUT === 'pods' && CPUS < 2) throw new Error('BENCH_LAYOUT=pods needs at least 2 CPUs');
const half = Math.floor(CPUS / 2);
const range = (from: number, to: number) => (to - from === 1 ? `${from}` : `${from}-${to - 1}`);
const TEXT_CPUS = range(0, half);
const IMAGE_CPUS = range(half, CPUS);
const cpusOf = (stage: string): { cpus?: string } =>
  LAYOUT === 'shared'
    ? {}
    : { cpus: stage === 'gateway' || stage === 'decoder' ? TEXT_CPUS : IMAGE_CPUS };
const THREADS = String(
  Number(process.env.BENCH_THREADS ?? (LAYOUT === 'pods' ? half : availableParallelism())),
);
const IMAGE = 'webp-lossy-640x480.webp';
const MAX_TOKENS = 16;
const ITERATIONS = 5;
// Small requests timed per phase: enough that p99 is not just the slowest one.
const SMALL = Number(process.env.BENCH_SMALL_SAMPLES ?? 200);
if (!Number.isSafeInteger(SMALL) || SMALL < 1)
  throw new Error(`BENCH_SMALL_SAMPLES must be a positive integer, not ${String(SMALL)}`);
// A hostile phase stops taking samples after this long (an attack may slow each to seconds).
const PHASE_MAX_S = Number(process.env.BENCH_PHASE_MAX_S ?? 300);
if (!(PHASE_MAX_S > 0)) throw new Error('BENCH_PHASE_MAX_S must be a positive number of seconds');
const root = packageRoot();

const start = (name: string, env: Record<string, string>) =>
  startBenchService(name, env, cpusOf(name));
type Running = BenchService;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  if (LAYOUT === 'pods') {
    // This process (its threads now, and those it makes later) on the image stages' side.
    execFileSync('taskset', ['-a', '-p', '-c', IMAGE_CPUS, String(process.pid)], {
      stdio: 'ignore',
    });
  }
  process.stdout.write(
    `layout: ${LAYOUT === 'pods' ? `pods (gateway and decoder on CPUs ${TEXT_CPUS}; preprocessor, encoder and the clients on ${IMAGE_CPUS}; ${THREADS} thread(s) per session)` : `shared (every process on all ${CPUS} CPUs, ${THREADS} thread(s) per session)`}\n`,
  );
  const dir = mkdtempSync(join(tmpdir(), 'loupe-bench-gateway-'));
  const running: Running[] = [];
  try {
    const modelDir = join(dir, 'small');
    writeTinyModel({ out: modelDir, size: 'small', seed: 0 });
    const jpegOrWebp = readFileSync(join(root, 'test', 'fixtures', 'images', IMAGE));
    // A different image each request, down to its pixels (the encoder's cache is keyed by the
    // sub-images, so trailing bytes or a new encoding of the same pixels would hit it): the
    // picture with a corner block coloured from i, encoded as WebP like the original.
    const variants = new Map<number, Buffer>();
    const raw = await sharp(jpegOrWebp).raw().toBuffer({ resolveWithObject: true });
    const variantOf = async (i: number) => {
      const pixels = Buffer.from(raw.data);
      const { width, height, channels } = raw.info;
      // A 32×32 block in a colour from i: large enough to survive the lossy encoding.
      for (let y = 0; y < 32; y++) {
        for (let x = 0; x < 32; x++) {
          const at = (y * width + x) * channels;
          pixels[at] = (i * 37) & 0xff;
          pixels[at + 1] = (i * 91) & 0xff;
          pixels[at + 2] = (i * 173) & 0xff;
        }
      }
      return sharp(pixels, { raw: { width, height, channels } }).webp({ quality: 90 }).toBuffer();
    };
    for (const i of [0, 1, 2, 3, 4, 1000, 2000, 3000, 3001, 3002, 3003, 3004, 9999])
      variants.set(i, await variantOf(i));
    const variant = (i: number) => variants.get(i)!;
    const question = 'What is in this picture?';
    const messages = [
      {
        role: 'user',
        content: [{ type: 'image' as const }, { type: 'text' as const, text: question }],
      },
    ];
    const load = loadavg()[0]!;

    // In-process: the same steps, sessions loaded once.
    const checkpoint = openCheckpoint(modelDir);
    const processor = loadImageProcessorConfig(modelDir);
    const tokenizer = loadTokenizer(modelDir);
    const template = loadChatTemplate(modelDir);
    const vision = await createSession(buildVisionGraph(checkpoint), {
      intraOpThreads: Number(THREADS),
    });
    const text = await loadTextModel(checkpoint, { session: { intraOpThreads: Number(THREADS) } });
    const eos = eosTokenIds(modelDir, { tokenizer });
    const limits = {
      maxBytes: 64 << 20,
      maxPixels: 100_000_000,
      maxFrames: 1000,
      timeoutSeconds: 60,
    };
    const inProcess = async (i: number) => {
      const t0 = performance.now();
      const pre = await preprocessImage(variant(i), { config: processor, split: false, limits });
      const rows = await encodeImages(vision, pre.subImages, checkpoint.config.vision);
      const prompt = expandImagePrompt(template.render(messages, { addGenerationPrompt: true }), {
        imageSeqLen: processor.imageSeqLen,
        splits: [false],
      });
      const ids = tokenizer.encode(prompt);
      const out = await generateGreedy(text, [{ ids, imageRows: rows.data }], {
        maxNewTokens: MAX_TOKENS,
        eosTokenIds: eos,
      });
      tokenizer.decode(out.sequences[0]!.generatedIds, { skipSpecialTokens: true });
      return performance.now() - t0;
    };
    await inProcess(1000);
    const local: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) local.push(await inProcess(i));
    await vision.release();
    await text.release();

    // The stack.
    const common = { LOUPE_MODEL_DIR: modelDir };
    const pre = await start('preprocessor', {
      ...common,
      LOUPE_PREPROCESSOR_PORT: '0',
      LOUPE_PREPROCESSOR_METRICS_PORT: '0',
    });
    running.push(pre);
    const enc = await start('encoder', {
      ...common,
      LOUPE_ENCODER_PORT: '0',
      LOUPE_ENCODER_METRICS_PORT: '0',
      LOUPE_ENCODER_THREADS: THREADS,
    });
    running.push(enc);
    const dec = await start('decoder', {
      ...common,
      LOUPE_DECODER_PORT: '0',
      LOUPE_DECODER_METRICS_PORT: '0',
      LOUPE_DECODER_THREADS: THREADS,
      LOUPE_DECODER_MAX_CONTEXT: '1024',
    });
    running.push(dec);
    const gw = await start('gateway', {
      ...common,
      LOUPE_GATEWAY_PORT: '0',
      LOUPE_GATEWAY_METRICS_PORT: '0',
      LOUPE_PREPROCESSOR_ENDPOINTS: `127.0.0.1:${String(pre.ready.grpcPort)}`,
      LOUPE_ENCODER_ENDPOINTS: `127.0.0.1:${String(enc.ready.grpcPort)}`,
      LOUPE_DECODER_ENDPOINTS: `127.0.0.1:${String(dec.ready.grpcPort)}`,
    });
    running.push(gw);
    const url = `http://127.0.0.1:${String(gw.ready.httpPort)}/v1/chat/completions`;
    const ask = async (bytes: Buffer) => {
      const t0 = performance.now();
      const r = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'small',
          max_tokens: MAX_TOKENS,
          temperature: 0,
          image_splitting: false,
          messages: [
            {
              role: 'user',
              content: [
                {
                  type: 'image_url',
                  image_url: { url: `data:image/webp;base64,${bytes.toString('base64')}` },
                },
                { type: 'text', text: question },
              ],
            },
          ],
        }),
      });
      if (r.status !== 200) throw new Error(`gateway answered ${r.status}: ${await r.text()}`);
      await r.json();
      return performance.now() - t0;
    };
    await ask(variant(2000));
    const stack: number[] = [];
    for (let i = 0; i < ITERATIONS; i++) stack.push(await ask(variant(3000 + i)));

    // Cached image, concurrency 8.
    const cached = variant(9999);
    await ask(cached);
    const n = 32;
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next++ < n) await ask(cached);
      }),
    );
    const cachedPerS = n / ((performance.now() - t0) / 1000);

    // A small request's latency, idle and under attack: timed, or why it failed (in a hostile
    // phase a failure misses the goal; before them it stops the bench).
    const probe = async (): Promise<number | string> => {
      const t = performance.now();
      try {
        const r = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model: 'small',
            max_tokens: 1,
            messages: [{ role: 'user', content: 'Hello, who are you?' }],
          }),
          signal: AbortSignal.timeout(60_000),
        });
        if (r.status !== 200) return `HTTP ${r.status} ${(await r.text()).slice(0, 200)}`;
        await r.json();
        return performance.now() - t;
      } catch (error) {
        return (error as Error).name === 'TimeoutError' ? 'no answer in 60 s' : String(error);
      }
    };
    const small = async () => {
      const r = await probe();
      if (typeof r === 'string') throw new Error(`the small request failed: ${r}`);
      return r;
    };
    const percentile = (xs: number[], p: number) =>
      [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(p * xs.length) - 1)]!;
    for (let i = 0; i < 3; i++) await small();
    const idle: number[] = [];
    for (let i = 0; i < SMALL; i++) idle.push(await small());
    // 16 × max_position_embeddings characters: the default cap, the largest prompt admitted.
    const words = ['red ', 'green ', 'blue ', 'apple ', 'river ', 'stone '];
    let maximal = '';
    for (let i = 0; maximal.length < 16 * checkpoint.config.text.maxPositionEmbeddings - 8; i++)
      maximal += words[i % words.length];
    const maximalBody = JSON.stringify({
      model: 'small',
      max_tokens: 1,
      messages: [{ role: 'user', content: maximal }],
    });
    let attacking = true;
    let attacks = 0;
    const attacker = (async () => {
      while (attacking) {
        const r = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: maximalBody,
        });
        await r.text();
        attacks++;
      }
    })();
    const attacked: number[] = [];
    for (let i = 0; i < SMALL; i++) attacked.push(await small());
    attacking = false;
    await attacker;
    const p = (xs: number[], q: number) => percentile(xs, q).toFixed(0);

    const l = median(local);
    const s = median(stack);
    process.stdout.write(
      `gateway benchmark: small checkpoint (seed 0), one ${IMAGE} image (split off, a new one each time), ${MAX_TOKENS} new tokens, ${THREADS} threads\n` +
        `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, node ${process.version}; 1-minute load average ${load.toFixed(2)}\n\n` +
        `in-process (preprocess + encode + generate, sessions loaded): median ${l.toFixed(0)} ms  (${local.map((x) => x.toFixed(0)).join(', ')})\n` +
        `through the stack (HTTP + 3 gRPC stages):                     median ${s.toFixed(0)} ms  (${stack.map((x) => x.toFixed(0)).join(', ')})\n` +
        `the stack adds ${(((s - l) / l) * 100).toFixed(1)}% (goal: at most 20%)\n` +
        `cached-image requests at concurrency 8: ${cachedPerS.toFixed(1)} requests/s\n` +
        `small text request (1 token), ${SMALL} each: idle p50 ${p(idle, 0.5)} ms, p99 ${p(idle, 0.99)} ms; ` +
        `while one client sends ${maximal.length}-character prompts back to back (${attacks} sent): p50 ${p(attacked, 0.5)} ms, p99 ${p(attacked, 0.99)} ms\n` +
        `p99 under attack / idle: ${(percentile(attacked, 0.99) / percentile(idle, 0.99)).toFixed(2)}× (goal: at most 1.5×)\n`,
    );

    // The same small request under each of issue 18's drills: an attack from another client
    // (attacks.ts; in a thread of its own) runs through the whole phase, and is over, every
    // connection closed and the stack idle again, before the next phase.
    const address = (port: unknown) => `127.0.0.1:${String(port)}`;
    const env = process.env;
    const target: Target = {
      gateway: address(gw.ready.httpPort),
      metrics: {
        gateway: address(gw.ready.metricsPort),
        preprocessor: address(pre.ready.metricsPort),
        encoder: address(enc.ready.metricsPort),
        decoder: address(dec.ready.metricsPort),
      },
      preprocessor: address(pre.ready.grpcPort),
      encoder: address(enc.ready.grpcPort),
      decoder: address(dec.ready.grpcPort),
      model: 'small',
      imageTokenId: checkpoint.config.imageTokenId,
      // The services read these from the same environment (startBenchService passes it on).
      maxBodyBytes: gatewayEnvSchema.shape.LOUPE_GATEWAY_MAX_BODY_BYTES.parse(
        env.LOUPE_GATEWAY_MAX_BODY_BYTES,
      ),
      maxInFlightPerClient: gatewayEnvSchema.shape.LOUPE_GATEWAY_MAX_IN_FLIGHT_PER_KEY.parse(
        env.LOUPE_GATEWAY_MAX_IN_FLIGHT_PER_KEY,
      ),
      streamWriteTimeoutMs: gatewayEnvSchema.shape.LOUPE_GATEWAY_STREAM_WRITE_TIMEOUT_MS.parse(
        env.LOUPE_GATEWAY_STREAM_WRITE_TIMEOUT_MS,
      ),
      maxImagePixels: preprocessorEnvSchema.shape.LOUPE_PREPROCESSOR_MAX_IMAGE_PIXELS.parse(
        env.LOUPE_PREPROCESSOR_MAX_IMAGE_PIXELS,
      ),
    };
    interface Phase {
      name: string;
      sent: string;
      times: number[];
      /** Small requests sent, and of them not answered with a 200. */
      samples: number;
      failed: number;
    }
    const idleP99 = percentile(idle, 0.99);
    const ratio = (phase: Phase) =>
      phase.times.length ? percentile(phase.times, 0.99) / idleP99 : Infinity;
    const met = (phase: Phase) => phase.failed === 0 && ratio(phase) <= 1.5;
    const mb = (bytes: number) =>
      bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
    const tally = (counts: Record<string, number>) =>
      Object.entries(counts)
        .map(([what, n]) => `${what} ×${n}`)
        .join(', ');
    const phases: Phase[] = [
      { name: 'idle', sent: '-', times: idle, samples: SMALL, failed: 0 },
      {
        name: 'maximal prompts',
        sent: `${attacks}, ${mb(attacks * Buffer.byteLength(maximalBody))}`,
        times: attacked,
        samples: SMALL,
        failed: 0,
      },
    ];
    const names = Object.keys(drills) as AttackName[];
    for (const [i, name] of names.entries()) {
      const settled = await untilIdle(target);
      const attack = await startAttack(name, target);
      const began = performance.now();
      const phase: Phase = { name, sent: '', times: [], samples: 0, failed: 0 };
      const failures: Record<string, number> = {};
      let k = 0;
      for (; k < SMALL && performance.now() - began < PHASE_MAX_S * 1000; k++) {
        const r = await probe();
        if (typeof r === 'number') phase.times.push(r);
        else failures[r] = (failures[r] ?? 0) + 1;
      }
      const report = await attack.stop();
      const seconds = ((performance.now() - began) / 1000).toFixed(1);
      phase.samples = k;
      phase.failed = k - phase.times.length;
      phase.sent = `${report.sent}, ${mb(report.bytes)}`;
      phases.push(phase);
      const latency = phase.times.length
        ? `p50 ${p(phase.times, 0.5)} ms, p99 ${p(phase.times, 0.99)} ms; p99 / idle ${ratio(phase).toFixed(2)}×`
        : 'none answered';
      process.stdout.write(
        `\nattack ${i + 1} of ${names.length}, ${name}: ${report.what}\n` +
          (settled ? '' : '  (the stack was still busy 60 s after the previous phase)\n') +
          `  sent ${report.sent} in ${seconds} s (${mb(report.bytes)}): ${tally(report.outcomes)}\n` +
          (report.leftBehind
            ? "  (the attack's thread still had work 10 s after it was stopped: terminated)\n"
            : '') +
          (k < SMALL
            ? `  (sampling stopped at the phase's limit of ${PHASE_MAX_S} s: BENCH_PHASE_MAX_S)\n`
            : '') +
          `  small text request (1 token), ${phase.times.length} of ${k} answered` +
          (phase.failed ? ` (${tally(failures)})` : '') +
          `: ${latency} (goal: at most 1.5×, every one answered): ${met(phase) ? 'met' : 'missed'}\n`,
      );
    }

    const row = (cells: string[]) =>
      cells
        .map((cell, i) => (i < 2 ? cell.padEnd([32, 22][i]!) : cell.padStart(i === 5 ? 9 : 8)))
        .join(' ') + '\n';
    process.stdout.write(
      `\nsmall text request (1 token), ${SMALL} per phase; goal: p99 at most 1.5× idle's, every one answered\n` +
        row([
          'phase',
          'attack sent (n, bytes)',
          'p50 ms',
          'p99 ms',
          'answered',
          'p99/idle',
          'goal',
        ]) +
        phases
          .map((phase, i) =>
            row([
              phase.name,
              phase.sent,
              phase.times.length ? p(phase.times, 0.5) : '-',
              phase.times.length ? p(phase.times, 0.99) : '-',
              `${phase.samples - phase.failed}/${phase.samples}`,
              `${ratio(phase).toFixed(2)}×`,
              i === 0 ? '-' : met(phase) ? 'met' : 'missed',
            ]),
          )
          .join(''),
    );
    // The last attack's work (the slow readers' generations) ends before the stack is stopped.
    await untilIdle(target);
  } finally {
    for (const r of running.reverse()) await r.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench:gateway failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
