// `npm run bench:gateway`: what the stack adds. On the `small` random checkpoint: the latency
// of a 1-image, 16-token chat request through gateway → preprocessor → encoder → decoder
// (four processes, real HTTP and gRPC on loopback, a new image each time so no cache helps),
// beside the same work in-process (preprocess, encode, greedy generation with sessions
// already loaded), in the same run; then the gateway's throughput for requests whose image
// the encoder has cached, at concurrency 8; then a small text request's p50/p99 idle and
// while one client sends maximal prompts back to back (as many characters as the gateway
// admits; they are refused once tokenized, for overflowing the context), the goal being a p99
// under attack within 1.5× of idle. BENCH_THREADS sets every session's threads.
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
import sharp from 'sharp';
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

    // A small request's latency, idle and under attack.
    const small = async () => {
      const t = performance.now();
      const r = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'small',
          max_tokens: 1,
          messages: [{ role: 'user', content: 'Hello, who are you?' }],
        }),
      });
      if (r.status !== 200) throw new Error(`gateway answered ${r.status}: ${await r.text()}`);
      await r.json();
      return performance.now() - t;
    };
    const percentile = (xs: number[], p: number) =>
      [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil(p * xs.length) - 1)]!;
    // Enough samples that p99 is not just the slowest one.
    const SMALL = 200;
    for (let i = 0; i < 3; i++) await small();
    const idle: number[] = [];
    for (let i = 0; i < SMALL; i++) idle.push(await small());
    // 16 × max_position_embeddings characters: the default cap, the largest prompt admitted.
    const words = ['red ', 'green ', 'blue ', 'apple ', 'river ', 'stone '];
    let maximal = '';
    for (let i = 0; maximal.length < 16 * checkpoint.config.text.maxPositionEmbeddings - 8; i++)
      maximal += words[i % words.length];
    let attacking = true;
    let attacks = 0;
    const attacker = (async () => {
      while (attacking) {
        const r = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model: 'small',
            max_tokens: 1,
            messages: [{ role: 'user', content: maximal }],
          }),
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
