// `npm run bench:gateway`: what the stack adds. On the `small` random checkpoint: the latency
// of a 1-image, 16-token chat request through gateway → preprocessor → encoder → decoder
// (four processes, real HTTP and gRPC on loopback, a new image each time so no cache helps),
// beside the same work in-process (preprocess, encode, greedy generation with sessions
// already loaded), in the same run; then the gateway's throughput for requests whose image
// the encoder has cached, at concurrency 8. BENCH_THREADS sets every session's threads.
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
} from '../../model/index.js';
import { packageRoot, startBenchService, type BenchService } from '../../runtime/index.js';

const THREADS = String(Number(process.env.BENCH_THREADS ?? availableParallelism()));
const IMAGE = 'webp-lossy-640x480.webp';
const MAX_TOKENS = 16;
const ITERATIONS = 5;
const root = packageRoot();

const start = startBenchService;
type Running = BenchService;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-bench-gateway-'));
  const running: Running[] = [];
  try {
    const modelDir = join(dir, 'small');
    writeTinyModel({ out: modelDir, size: 'small', seed: 0 });
    const jpegOrWebp = readFileSync(join(root, 'test', 'fixtures', 'images', IMAGE));
    // A different image each request: the same picture with i trailing bytes (ignored by the
    // decoder, not by the content hash), so neither side can use a cache.
    const variant = (i: number) => Buffer.concat([jpegOrWebp, Buffer.alloc(i + 1)]);
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

    const l = median(local);
    const s = median(stack);
    process.stdout.write(
      `gateway benchmark: small checkpoint (seed 0), one ${IMAGE} image (split off, a new one each time), ${MAX_TOKENS} new tokens, ${THREADS} threads\n` +
        `machine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, node ${process.version}; 1-minute load average ${load.toFixed(2)}\n\n` +
        `in-process (preprocess + encode + generate, sessions loaded): median ${l.toFixed(0)} ms  (${local.map((x) => x.toFixed(0)).join(', ')})\n` +
        `through the stack (HTTP + 3 gRPC stages):                     median ${s.toFixed(0)} ms  (${stack.map((x) => x.toFixed(0)).join(', ')})\n` +
        `the stack adds ${(((s - l) / l) * 100).toFixed(1)}% (goal: at most 20%)\n` +
        `cached-image requests at concurrency 8: ${cachedPerS.toFixed(1)} requests/s\n`,
    );
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
