// The decoder as a user runs it: a real process on ephemeral loopback ports, the seed-0 tiny
// checkpoint on ONNX Runtime, real gRPC streams, checked against the reference's goldens.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../../proto/gen/grpc/health/v1/health.js';
import {
  DecoderClient,
  FinishReason,
  type GenerateRequest,
} from '../../proto/gen/loupe/v1/decoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import {
  call,
  checkHealth,
  clientOptions,
  healthClient,
  loupeReason as reason,
} from '../../test/helpers/grpc.js';
import { scrapeMetrics, type Metrics } from '../../test/helpers/metrics.js';
import { listServicesByReflection } from '../../test/helpers/reflection.js';
import {
  builtService,
  ephemeralPorts,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from '../../test/helpers/service-process.js';
import { until } from '../../test/helpers/wait.js';
import { writeTinyModel } from '../model/index.js';
import { goldenCaseNames, loadGoldenCase } from '../model/language-model/goldens.test-helper.js';
import { generate, generateRequest as request } from './generate.test-helper.js';

const script = builtService('decoder');
const work = mkdtempSync(join(tmpdir(), 'loupe-decoder-'));
const modelDir = join(work, 'tiny-seed0');
const IMAGE_TOKEN = 459;
const HIDDEN = 64;

const client = (address: string) =>
  new DecoderClient(address, credentials.createInsecure(), clientOptions);

/** A golden case as a request: image rows (float32) at the prompt's <image> positions. */
function goldenRequest(name: string, extra: Partial<GenerateRequest> = {}): GenerateRequest {
  const golden = loadGoldenCase(name);
  const positions = golden.inputIds.flatMap((id, i) => (id === IMAGE_TOKEN ? [i] : []));
  const images = golden.imageRows
    ? [
        {
          embeddings: {
            dtype: Dtype.DTYPE_FLOAT32,
            shape: [positions.length, HIDDEN],
            data: Buffer.from(
              golden.imageRows.buffer,
              golden.imageRows.byteOffset,
              golden.imageRows.byteLength,
            ),
          },
        },
      ]
    : [];
  return request(golden.inputIds, { images, ...extra });
}

/** Polls Load until `ok` holds (a readiness wait, bounded). */
function waitForLoad(
  c: DecoderClient,
  ok: (load: { waiting: number; running: number; kvCacheUsage: number }) => boolean,
) {
  let last: unknown;
  return until(
    'the decoder load',
    async () => {
      const load = await call(c, c.load, {});
      last = load;
      return ok(load) ? load : undefined;
    },
    { detail: () => `load still ${JSON.stringify(last)}` },
  );
}

beforeAll(() => writeTinyModel({ out: modelDir, seed: 0 }));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('decoder service', () => {
  let service: ServiceProcess;
  let decoder: DecoderClient;
  beforeAll(async () => {
    service = await startServiceProcess(script, {
      ...ephemeralPorts('DECODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_DECODER_THREADS: '1',
      LOUPE_DECODER_MAX_RUNNING: '8',
      LOUPE_DECODER_MAX_CONTEXT: '1024',
      LOUPE_DECODER_MAX_NEW_TOKENS: '256',
      LOUPE_DECODER_MAX_PREFILL_TOKENS: '64',
    });
    decoder = client(service.grpcAddress);
  });
  afterAll(async () => {
    decoder?.close();
    if (service) expect(await service.stop()).toBe(0);
  });

  it('serves health, reflection, Info and Load', async () => {
    const health = healthClient(service.grpcAddress);
    expect((await checkHealth(health, 'loupe.v1.Decoder')).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    health.close();
    expect(await listServicesByReflection(service.grpcAddress)).toContain('loupe.v1.Decoder');
    expect(await call(decoder, decoder.info, {})).toEqual({
      modelId: 'tiny-seed0',
      vocabSize: 461,
      maxContext: 1024,
      maxNewTokens: 256,
      hiddenSize: 64,
      imageTokenId: IMAGE_TOKEN,
      eosTokenIds: [2, 460],
      load: { waiting: 0, running: 0, kvCacheUsage: 0 },
      weightFormat: 'float32',
      // The text graph's float32 weights: 2 layers of q, k, v, o, gate, up, down and two
      // norms, the final norm and lm_head (embed_tokens stays on the host).
      weightBytes: 4 * (2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64) + 64 + 461 * 64),
    });
  });

  it('gives each of 8 concurrent requests exactly the tokens it gets alone (the goldens)', async () => {
    const names = goldenCaseNames('tiny-');
    const cases = [...names.map((name) => ({ name, max: 32 })), { name: 'tiny-text-only', max: 5 }];
    expect(cases).toHaveLength(8);
    const results = await Promise.all(
      cases.map(({ name, max }) => generate(decoder, goldenRequest(name, { maxNewTokens: max }))),
    );
    for (const [i, { name, max }] of cases.entries()) {
      const r = results[i]!;
      expect(r.error, name).toBeUndefined();
      const golden = loadGoldenCase(name).generatedIds.slice(0, max);
      expect(
        r.tokens.map((t) => t.id),
        name,
      ).toEqual(golden);
      expect(r.tokens.map((t) => t.index)).toEqual(golden.map((_, k) => k));
      const stopped = golden.length < 32 && max === 32;
      expect(r.finished?.reason, name).toBe(
        stopped ? FinishReason.FINISH_REASON_STOP : FinishReason.FINISH_REASON_LENGTH,
      );
      expect(r.finished?.generatedTokens).toBe(golden.length);
      expect(r.finished?.promptTokens).toBe(loadGoldenCase(name).inputIds.length);
    }
    const metrics = await scrapeMetrics(service);
    // Several sequences decoded in one step.
    const decode = { step: 'decode' };
    expect(
      metrics.value('loupe_decoder_batch_size_sum', decode)! /
        metrics.value('loupe_decoder_batch_size_count', decode)!,
    ).toBeGreaterThan(1.5);
  });

  it('samples reproducibly per seed, whatever shares the batch, and returns logprobs', async () => {
    const prompt = loadGoldenCase('tiny-text-only').inputIds;
    const seeded = request(prompt, {
      sampling: { temperature: 1.3, topP: 0.9, topK: 50, seed: '1234' },
      maxNewTokens: 16,
      logprobs: true,
      topLogprobs: 3,
    });
    const alone = await generate(decoder, seeded);
    const [together] = await Promise.all([
      generate(decoder, seeded),
      generate(decoder, goldenRequest('tiny-one-image-split-on')),
      generate(decoder, request(prompt.slice(0, 7), { sampling: { temperature: 0.7, seed: '5' } })),
    ]);
    expect(together!.tokens.map((t) => t.id)).toEqual(alone.tokens.map((t) => t.id));
    const other = await generate(decoder, {
      ...seeded,
      sampling: { ...seeded.sampling!, seed: '99' },
    });
    expect(other.tokens.map((t) => t.id)).not.toEqual(alone.tokens.map((t) => t.id));
    for (const t of alone.tokens) {
      expect(t.topLogprobs).toHaveLength(3);
      expect(t.logprob).toBeLessThanOrEqual(0);
      const lps = t.topLogprobs.map((x) => x.logprob);
      expect([...lps].sort((a, b) => b - a)).toEqual(lps);
      expect(t.logprob).toBeLessThanOrEqual(lps[0]! + 1e-6);
    }
  });

  it('frees the KV slot within a step when the caller cancels', async () => {
    const cancelled = (m: Metrics) =>
      m.value('loupe_decoder_request_success_total', { finished_reason: 'cancelled' }) ?? 0;
    const before = await scrapeMetrics(service);
    const long = request(loadGoldenCase('tiny-text-only').inputIds, {
      maxNewTokens: 250,
      stopTokenIds: [],
      logitBias: {},
      responseFormat: undefined,
      sampling: { temperature: 1, seed: '7' },
    });
    const seen = await generate(decoder, long, {
      onToken: (n, cancel) => {
        if (n === 3) cancel();
      },
    });
    expect(seen.error?.code).toBe(status.CANCELLED);
    const load = await waitForLoad(decoder, (l) => l.running === 0);
    expect(load).toEqual({ waiting: 0, running: 0, kvCacheUsage: 0 });
    const after = await scrapeMetrics(service);
    await expect
      .poll(async () => cancelled(await scrapeMetrics(service)))
      .toBe(cancelled(before) + 1);
    expect(after.value('loupe_decoder_kv_cache_usage_perc')).toBe(0);
  });

  it('refuses bad requests with INVALID_ARGUMENT naming the field', async () => {
    const prompt = [1, 5, 9];
    const image = (rows: number, dtype = Dtype.DTYPE_FLOAT32) => ({
      embeddings: { dtype, shape: [rows, HIDDEN], data: Buffer.alloc(rows * HIDDEN * 4) },
    });
    const cases: Array<[GenerateRequest, RegExp, string]> = [
      [request([]), /`prompt_token_ids` is empty/, 'empty_prompt'],
      [
        request([1, 461]),
        /`prompt_token_ids\[1\]` is 461, outside the vocabulary of 461/,
        'bad_token',
      ],
      [
        request(prompt, { maxNewTokens: 300 }),
        /`max_new_tokens` must be <= 256, got 300/,
        'too_long',
      ],
      [
        request(new Array(900).fill(5), { maxNewTokens: 200 }),
        /\(900 tokens\) \+ `max_new_tokens` \(200\) exceed the maximum context of 1024/,
        'context_length_exceeded',
      ],
      [
        request(prompt, { sampling: { temperature: -1 } }),
        /`sampling.temperature` must be in \[0, 100\], got -1/,
        'bad_sampling',
      ],
      [
        request(prompt, { sampling: { temperature: 1, topP: 0 } }),
        /`sampling.top_p` must be in \(0, 1\], got 0/,
        'bad_sampling',
      ],
      [
        request(prompt, { sampling: { temperature: 1, presencePenalty: 3 } }),
        /`sampling.presence_penalty` must be in \[-2, 2\], got 3/,
        'bad_sampling',
      ],
      [
        request(prompt, { logprobs: true, topLogprobs: 21 }),
        /`top_logprobs` must be <= 20, got 21/,
        'bad_logprobs',
      ],
      [request(prompt, { topLogprobs: 2 }), /`top_logprobs` needs `logprobs`/, 'bad_logprobs'],
      [
        request([1, IMAGE_TOKEN, IMAGE_TOKEN, 5]),
        /2 <image> tokens but 0 image embedding rows/,
        'bad_image',
      ],
      [
        request([1, IMAGE_TOKEN, 5], { images: [image(2)] }),
        /1 <image> tokens but 2 image embedding rows/,
        'bad_image',
      ],
      [
        request([1, IMAGE_TOKEN, 5], {
          images: [
            {
              ...image(1),
              embeddings: { dtype: Dtype.DTYPE_FLOAT32, shape: [1, 32], data: Buffer.alloc(128) },
            },
          ],
        }),
        /`images\[0\].embeddings.shape` is \[1, 32\], expected \[rows, 64\]/,
        'bad_image',
      ],
      [
        request([1, IMAGE_TOKEN, 5], {
          images: [
            {
              ...image(1),
              embeddings: { dtype: Dtype.DTYPE_FLOAT32, shape: [1, 64], data: Buffer.alloc(10) },
            },
          ],
        }),
        /`images\[0\].embeddings.data` has 10 bytes/,
        'bad_image',
      ],
      [
        request([1, IMAGE_TOKEN, 5], {
          images: [{ ...image(1), contentHash: Buffer.alloc(65) }],
        }),
        /`images\[0\].content_hash` has 65 bytes; at most 64/,
        'bad_image',
      ],
      [
        request([1, IMAGE_TOKEN, 5], { images: [image(1, Dtype.DTYPE_INT32)] }),
        /`images\[0\].embeddings.dtype` must be DTYPE_FLOAT16 or DTYPE_FLOAT32/,
        'bad_image',
      ],
    ];
    for (const [bad, message, why] of cases) {
      const r = await generate(decoder, bad);
      expect([String(message), r.error?.code]).toEqual([String(message), status.INVALID_ARGUMENT]);
      expect(r.error!.details).toMatch(message);
      expect(reason(r.error!)).toBe(why);
      expect(r.tokens).toEqual([]);
    }
  });
});

describe('decoder limits and shutdown', () => {
  afterEach(async () => {
    await stopServiceProcesses();
  });

  it('queues beyond the running limit, refuses beyond the queue, and drains on SIGTERM', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('DECODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_DECODER_THREADS: '1',
      LOUPE_DECODER_MAX_RUNNING: '1',
      LOUPE_DECODER_MAX_WAITING: '1',
      LOUPE_DECODER_MAX_CONTEXT: '4096',
      LOUPE_DECODER_MAX_NEW_TOKENS: '4000',
    });
    const decoder = client(service.grpcAddress);
    try {
      const prompt = loadGoldenCase('tiny-text-only').inputIds;
      // Greedy on this prompt runs past 1,000 tokens without an EOS: long enough to queue behind.
      let cancelFirst: (() => void) | undefined;
      const first = generate(decoder, request(prompt, { maxNewTokens: 4000 }), {
        onToken: (_, cancel) => (cancelFirst = cancel),
      });
      await waitForLoad(decoder, (l) => l.running === 1);
      const second = generate(decoder, request(prompt, { maxNewTokens: 4 }));
      await waitForLoad(decoder, (l) => l.waiting === 1);
      const third = await generate(decoder, request(prompt, { maxNewTokens: 4 }));
      expect(third.error?.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(third.error?.details).toMatch(
        /decoder queue is full: 1 requests waiting for a slot, limit 1/,
      );
      expect(reason(third.error!)).toBe('queue_full');

      // SIGTERM while one request runs and one waits: the server drains both. The first is
      // cancelled by its caller, which frees the slot for the second, which then finishes.
      const stopped = service.stop();
      cancelFirst!();
      const [a, b] = await Promise.all([first, second]);
      expect(a.error?.code).toBe(status.CANCELLED);
      expect(b.error).toBeUndefined();
      expect(b.tokens.map((t) => t.id)).toEqual(
        loadGoldenCase('tiny-text-only').generatedIds.slice(0, 4),
      );
      expect(b.finished?.reason).toBe(FinishReason.FINISH_REASON_LENGTH);
      expect(await stopped).toBe(0);
    } finally {
      decoder.close();
    }
  });
});
