// The encoder as a user runs it: real processes on ephemeral loopback ports, the seed-0 tiny
// checkpoint on ONNX Runtime, real gRPC.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../../proto/gen/grpc/health/v1/health.js';
import {
  EncoderClient,
  type EncodeRequest,
  type EncodeResponse,
} from '../../proto/gen/loupe/v1/encoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { fixtureImage } from '../../test/helpers/fixtures.js';
import {
  call,
  callError,
  checkHealth,
  clientOptions,
  healthClient,
  loupeReason as reason,
} from '../../test/helpers/grpc.js';
import { scrapeMetrics, waitForMetrics } from '../../test/helpers/metrics.js';
import { listServicesByReflection } from '../../test/helpers/reflection.js';
import {
  builtService,
  ephemeralPorts,
  repoRoot,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from '../../test/helpers/service-process.js';
import { subImagesHash } from '../runtime/index.js';
import {
  buildVisionGraph,
  createSession,
  encodeImages,
  float32ToFloat16,
  openCheckpoint,
  loadImageProcessorConfig,
  preprocessImage,
  readSafetensors,
  writeTinyModel,
  type SubImage,
} from '../model/index.js';
import { estimateRunBytes, largestRunBytes, runMemoryModel } from './run-memory.js';

const script = builtService('encoder');
const work = mkdtempSync(join(tmpdir(), 'loupe-encoder-'));
const modelDir = join(work, 'tiny-seed0');
const LIMITS = { maxBytes: 64 << 20, maxPixels: 100_000_000, maxFrames: 1000, timeoutSeconds: 60 };

const client = (address: string) =>
  new EncoderClient(address, credentials.createInsecure(), clientOptions);
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest();

/** The wire form of sub-images (the preprocessor's output contract). */
function wire(subImages: readonly SubImage[]): EncodeRequest['subImages'] {
  return subImages.map(({ height, width, pixels }) => ({
    height,
    width,
    pixels: { dtype: Dtype.DTYPE_UINT8, shape: [3, height, width], data: Buffer.from(pixels) },
  }));
}

function request(subImages: readonly SubImage[], extra: Partial<EncodeRequest> = {}) {
  return {
    subImages: wire(subImages),
    contentHash: Buffer.alloc(0),
    split: false,
    outputDtype: Dtype.DTYPE_FLOAT32,
    ...extra,
  } satisfies EncodeRequest;
}

/** Seeded noise, `width` × `height`. */
function noise(width: number, height: number, seed: number): SubImage {
  let a = (seed * 2654435761) >>> 0;
  const pixels = Uint8Array.from({ length: 3 * width * height }, () => {
    a = (Math.imul(a, 1103515245) + 12345) >>> 0;
    return a >>> 24;
  });
  return { width, height, pixels };
}

const floats = (r: EncodeResponse) => {
  const data = r.embeddings!.data;
  return new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
};
const maxAbsDiff = (a: Float32Array, b: Float32Array) => {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
};

let photo: { subImages: SubImage[]; hash: Buffer };
beforeAll(async () => {
  writeTinyModel({ out: modelDir, seed: 0 });
  const bytes = fixtureImage('jpeg-1600x1067.jpg');
  const pre = await preprocessImage(bytes, {
    config: loadImageProcessorConfig(modelDir),
    split: true,
    limits: LIMITS,
  });
  photo = { subImages: pre.subImages, hash: subImagesHash(pre.subImages) };
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('encoder service', () => {
  let service: ServiceProcess;
  let encoder: EncoderClient;
  beforeAll(async () => {
    service = await startServiceProcess(script, {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_ENCODER_CACHE_BYTES: String(3 * (5 * 64 * 64 * 2 + 256)), // three 5-sub-image images
    });
    encoder = client(service.grpcAddress);
  });
  afterAll(async () => {
    encoder?.close();
    if (service) expect(await service.stop()).toBe(0);
  });

  it('serves health, reflection and Info', async () => {
    const health = healthClient(service.grpcAddress);
    expect((await checkHealth(health)).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect((await checkHealth(health, 'loupe.v1.Encoder')).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    health.close();
    expect(await listServicesByReflection(service.grpcAddress)).toContain('loupe.v1.Encoder');
    expect(await call(encoder, encoder.info, {})).toEqual({
      modelId: 'tiny-seed0',
      hiddenSize: 64,
      tokensPerSubImage: 64,
      minSide: 14,
      maxSide: 980,
      maxSubImagesPerRequest: 16,
      maxBatchSubImages: 8,
      maxQueue: 64,
      weightFormat: 'float32',
      weightBytes: expect.any(Number),
    });
  });

  it('gives the embeddings `loupe encode` gives, in float32 and float16', async () => {
    const out = join(work, 'cli.safetensors');
    await promisify(execFile)(process.execPath, [
      join(repoRoot, 'bin', 'loupe.js'),
      'encode',
      '--model',
      modelDir,
      '--image',
      join(repoRoot, 'test', 'fixtures', 'images', 'jpeg-1600x1067.jpg'),
      '--split',
      'on',
      '--out',
      out,
    ]);
    const cli = readSafetensors(out).get('image_hidden_states')!;
    const f32 = await call(encoder, encoder.encode, request(photo.subImages));
    expect(f32.cacheHit).toBe(false);
    expect(f32.embeddings!.dtype).toBe(Dtype.DTYPE_FLOAT32);
    expect(f32.embeddings!.shape).toEqual(cli.shape);
    expect(cli.shape).toEqual([5, 64, 64]);
    // The CLI runs all five sub-images in one padded batch; the service batches the four
    // equal crops apart from the smaller whole image (padding limit), so only rounding differs.
    expect(maxAbsDiff(floats(f32), cli.data as Float32Array)).toBeLessThanOrEqual(1e-5);

    const f16 = await call(
      encoder,
      encoder.encode,
      request(photo.subImages, { outputDtype: Dtype.DTYPE_UNSPECIFIED }),
    );
    expect(f16.embeddings!.dtype).toBe(Dtype.DTYPE_FLOAT16);
    expect(f16.embeddings!.shape).toEqual([5, 64, 64]);
    const half = f16.embeddings!.data;
    const bits = new Uint16Array(
      half.buffer.slice(half.byteOffset, half.byteOffset + half.byteLength),
    );
    expect(bits).toEqual(Uint16Array.from(floats(f32), (v) => float32ToFloat16(v)));
  });

  it('caches by content hash, split and dtype, answers Lookup, and evicts the oldest', async () => {
    const before = await scrapeMetrics(service);
    const hashed = request(photo.subImages, {
      contentHash: photo.hash,
      split: true,
      outputDtype: Dtype.DTYPE_FLOAT16,
    });
    const first = await call(encoder, encoder.encode, hashed);
    const again = await call(encoder, encoder.encode, hashed);
    expect([first.cacheHit, again.cacheHit]).toEqual([false, true]);
    expect(again.embeddings).toEqual(first.embeddings);
    const lookup = (hash: Buffer, split: boolean, outputDtype = Dtype.DTYPE_FLOAT16) =>
      call(encoder, encoder.lookup, { contentHash: hash, split, outputDtype });
    expect((await lookup(photo.hash, true)).embeddings).toEqual(first.embeddings);
    const missing = async (hash: Buffer, split: boolean, outputDtype?: Dtype) => {
      const error = await callError(encoder, encoder.lookup, {
        contentHash: hash,
        split,
        outputDtype: outputDtype ?? Dtype.DTYPE_FLOAT16,
      });
      expect(error.code).toBe(status.NOT_FOUND);
      expect(error.details).toMatch(/no float(16|32) embeddings cached/);
    };
    await missing(photo.hash, false); // other split setting
    await missing(photo.hash, true, Dtype.DTYPE_FLOAT32); // other dtype
    await missing(sha256(Buffer.from('never sent')), true);

    const after = await scrapeMetrics(service);
    const delta = (name: string) => (after.value(name) ?? 0) - (before.value(name) ?? 0);
    expect(delta('loupe_encoder_cache_hits_total')).toBe(2);
    // One miss, the first Encode's: a Lookup that finds nothing is not one (its caller goes on
    // to Encode, which counts it), only a not_found answer.
    expect(delta('loupe_encoder_cache_misses_total')).toBe(1);
    const notFound = (m: typeof after) =>
      m.value('loupe_encoder_requests_total', { outcome: 'not_found' }) ?? 0;
    expect(notFound(after) - notFound(before)).toBe(3);
    // Only the first Encode ran the model: five sub-images.
    expect(delta('loupe_encoder_sub_images_total')).toBe(5);

    // Three more images fill the three-image cache and push the first one out.
    for (let i = 0; i < 3; i++) {
      const sub = photo.subImages.map((s, j) => noise(s.width, s.height, 10 * i + j));
      await call(
        encoder,
        encoder.encode,
        request(sub, {
          contentHash: subImagesHash(sub),
          split: true,
          outputDtype: Dtype.DTYPE_FLOAT16,
        }),
      );
    }
    await missing(photo.hash, true);
    const evicted = await scrapeMetrics(service);
    expect(evicted.value('loupe_encoder_cache_evictions_total')).toBeGreaterThanOrEqual(1);
    expect(evicted.value('loupe_encoder_cache_entries')).toBe(3);
  });

  it('answers health, metrics and Info while a batch computes (the model runs off the event loop)', async () => {
    const big = Array.from({ length: 8 }, (_, i) => noise(980, 980, 100 + i));
    let done = false;
    const pending = call(encoder, encoder.encode, request(big), { deadlineMs: 120_000 }).then(
      (r) => {
        done = true;
        return r;
      },
    );
    // In flight and no longer queued: its batch is running.
    await waitForMetrics(
      service,
      (m) =>
        m.value('loupe_encoder_requests_in_flight') === 1 &&
        m.value('loupe_encoder_queue_depth') === 0,
    );
    const health = healthClient(service.grpcAddress);
    expect((await checkHealth(health)).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    health.close();
    expect((await call(encoder, encoder.info, {})).modelId).toBe('tiny-seed0');
    await scrapeMetrics(service);
    expect(done).toBe(false);
    expect((await pending).embeddings!.shape).toEqual([8, 64, 64]);
  });

  it('refuses bad input with INVALID_ARGUMENT naming the field', async () => {
    const ok = noise(28, 28, 1);
    const cases: Array<[string, EncodeRequest, RegExp, string]> = [
      ['empty', request([]), /`sub_images` is empty/, 'empty'],
      [
        'too many',
        request(Array.from({ length: 17 }, () => ok)),
        /`sub_images` has 17 sub-images, over the limit of 16/,
        'too_many_sub_images',
      ],
      ['too small', request([noise(10, 28, 1)]), /`sub_images\[0\].width` is 10/, 'bad_size'],
      ['too large', request([noise(28, 981, 1)]), /`sub_images\[0\].height` is 981/, 'bad_size'],
      [
        'wrong dtype',
        {
          ...request([ok]),
          subImages: [
            {
              height: 28,
              width: 28,
              pixels: {
                dtype: Dtype.DTYPE_FLOAT32,
                shape: [3, 28, 28],
                data: Buffer.alloc(3 * 28 * 28 * 4),
              },
            },
          ],
        },
        /`sub_images\[0\].pixels.dtype` is DTYPE_FLOAT32, expected DTYPE_UINT8/,
        'bad_dtype',
      ],
      [
        'shape disagrees with the sides',
        {
          ...request([ok]),
          subImages: [
            {
              height: 28,
              width: 28,
              pixels: {
                dtype: Dtype.DTYPE_UINT8,
                shape: [3, 14, 56],
                data: Buffer.alloc(3 * 28 * 28),
              },
            },
          ],
        },
        /`sub_images\[0\].pixels.shape` is \[3, 14, 56\], expected \[3, 28, 28\]/,
        'bad_shape',
      ],
      [
        'bytes disagree with the shape',
        {
          ...request([ok]),
          subImages: [
            {
              height: 28,
              width: 28,
              pixels: { dtype: Dtype.DTYPE_UINT8, shape: [3, 28, 28], data: Buffer.alloc(100) },
            },
          ],
        },
        /`sub_images\[0\].pixels.data` has 100 bytes; shape \[3, 28, 28\] needs 2352/,
        'bad_shape',
      ],
      [
        'missing pixels',
        { ...request([ok]), subImages: [{ height: 28, width: 28, pixels: undefined }] },
        /`sub_images\[0\].pixels` is missing/,
        'bad_pixels',
      ],
      [
        'bad hash',
        request([ok], { contentHash: Buffer.alloc(5) }),
        /`content_hash` must be a 32-byte SHA-256 digest or empty, got 5 bytes/,
        'bad_hash',
      ],
      [
        'bad output dtype',
        request([ok], { outputDtype: Dtype.DTYPE_INT32 }),
        /`output_dtype` must be DTYPE_FLOAT16 or DTYPE_FLOAT32, got DTYPE_INT32/,
        'bad_dtype',
      ],
    ];
    for (const [name, bad, message, why] of cases) {
      const error = await callError(encoder, encoder.encode, bad);
      expect([name, error.code]).toEqual([name, status.INVALID_ARGUMENT]);
      expect(error.details, name).toMatch(message);
      expect(reason(error), name).toBe(why);
    }
    const lookupError = await callError(encoder, encoder.lookup, {
      contentHash: Buffer.alloc(0),
      split: false,
      outputDtype: Dtype.DTYPE_FLOAT16,
    });
    expect(lookupError.code).toBe(status.INVALID_ARGUMENT);
    expect(lookupError.details).toMatch(/`content_hash` must be a 32-byte SHA-256 digest, got 0/);
    // Still serving.
    expect((await call(encoder, encoder.encode, request([ok]))).embeddings!.shape).toEqual([
      1, 64, 64,
    ]);
  });

  it('refuses a content_hash that is not the hash of the sub-images sent, caching nothing', async () => {
    const honest = [noise(56, 42, 77)];
    const victim = [noise(56, 42, 78)];
    const victimHash = subImagesHash(victim);
    const hashed = (subImages: SubImage[], contentHash: Buffer) =>
      request(subImages, { contentHash, split: false, outputDtype: Dtype.DTYPE_FLOAT16 });
    const lookupError = (hash: Buffer) =>
      callError(encoder, encoder.lookup, {
        contentHash: hash,
        split: false,
        outputDtype: Dtype.DTYPE_FLOAT16,
      });
    const before = await scrapeMetrics(service);

    // Someone else's image's hash on these bytes: the poisoning attempt.
    const lie = await callError(encoder, encoder.encode, hashed(honest, victimHash));
    expect(lie.code).toBe(status.INVALID_ARGUMENT);
    expect(reason(lie)).toBe('content_hash_mismatch');
    expect(lie.details).toMatch(/`content_hash` [0-9a-f]{16}… does not match the sub-images sent/);
    // The hash of the encoded file (not of the sub-images) is no claim about them either.
    const fileHash = sha256(fixtureImage('jpeg-1600x1067.jpg'));
    const file = await callError(encoder, encoder.encode, hashed(photo.subImages, fileHash));
    expect([file.code, reason(file)]).toEqual([status.INVALID_ARGUMENT, 'content_hash_mismatch']);

    // Nothing ran, nothing was stored: not under the claimed hash, not under the true one.
    for (const hash of [victimHash, subImagesHash(honest), fileHash])
      expect((await lookupError(hash)).code).toBe(status.NOT_FOUND);
    const after = await scrapeMetrics(service);
    const delta = (name: string) => (after.value(name) ?? 0) - (before.value(name) ?? 0);
    expect(delta('loupe_encoder_sub_images_total')).toBe(0);
    expect(after.value('loupe_encoder_cache_entries')).toBe(
      before.value('loupe_encoder_cache_entries'),
    );

    // The owner of the hash still gets its own image computed, and an honest Encode then
    // Lookup hits.
    const victimFirst = await call(encoder, encoder.encode, hashed(victim, victimHash));
    expect(victimFirst.cacheHit).toBe(false);
    const honestHash = subImagesHash(honest);
    const first = await call(encoder, encoder.encode, hashed(honest, honestHash));
    expect(first.cacheHit).toBe(false);
    expect(first.embeddings).not.toEqual(victimFirst.embeddings);
    const found = await call(encoder, encoder.lookup, {
      contentHash: honestHash,
      split: false,
      outputDtype: Dtype.DTYPE_FLOAT16,
    });
    expect(found.cacheHit).toBe(true);
    expect(found.embeddings).toEqual(first.embeddings);
    const victimFound = await call(encoder, encoder.lookup, {
      contentHash: victimHash,
      split: false,
      outputDtype: Dtype.DTYPE_FLOAT16,
    });
    expect(victimFound.embeddings).toEqual(victimFirst.embeddings);
  });
});

describe('encoder batching, limits and shutdown', () => {
  // Each test starts its own service; this stops any an early failure left running.
  afterEach(async () => {
    await stopServiceProcesses();
  });

  it('batches concurrent requests, each getting what it gets alone', async () => {
    // A long wait and a batch of exactly the four sub-images sent make the batch certain.
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_ENCODER_MAX_BATCH: '4',
      LOUPE_ENCODER_MAX_WAIT_MS: '10000',
      LOUPE_ENCODER_MAX_PADDING_PERCENT: '100',
    });
    const encoder = client(service.grpcAddress);
    try {
      // Sides that are and are not multiples of 14; different sizes, so the batch is padded.
      const images = [noise(70, 43, 1), noise(98, 112, 2), noise(56, 29, 3), noise(98, 112, 4)];
      const together = await Promise.all(
        images.map((image) => call(encoder, encoder.encode, request([image]))),
      );
      const metrics = await scrapeMetrics(service);
      expect(metrics.value('loupe_encoder_batch_size_count')).toBe(1);
      expect(metrics.value('loupe_encoder_batch_size_sum')).toBe(4);
      // Alone: each image in its own run, in this process.
      const checkpoint = openCheckpoint(modelDir);
      const session = await createSession(buildVisionGraph(checkpoint), { intraOpThreads: 1 });
      try {
        for (const [i, image] of images.entries()) {
          const alone = await encodeImages(session, [image], checkpoint.config.vision);
          // Padded with masks (masked attention) against unpadded (flash attention): rounding.
          expect(maxAbsDiff(floats(together[i]!), alone.data), `image ${i}`).toBeLessThanOrEqual(
            1e-5,
          );
        }
        // Equal sizes need no padding: then a batch gives each exactly its solo bits.
        const same = [noise(98, 112, 5), noise(98, 112, 6), noise(98, 112, 7), noise(98, 112, 8)];
        const batched = await Promise.all(
          same.map((image) => call(encoder, encoder.encode, request([image]))),
        );
        for (const [i, image] of same.entries()) {
          const alone = await encodeImages(session, [image], checkpoint.config.vision);
          expect(floats(batched[i]!), `same-size image ${i}`).toEqual(alone.data);
        }
      } finally {
        await session.release();
      }
    } finally {
      encoder.close();
      expect(await service.stop()).toBe(0);
    }
  });

  it('refuses work over the queue limit and drops work whose deadline passed before it ran', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_ENCODER_MAX_BATCH: '8',
      LOUPE_ENCODER_MAX_WAIT_MS: '10000',
      LOUPE_ENCODER_MAX_QUEUE: '6',
    });
    const encoder = client(service.grpcAddress);
    try {
      const three = [1, 2, 3].map((i) => noise(28, 28, i));
      // Waits for the batch to fill (10 s) but its deadline comes first.
      const expiring = callError(encoder, encoder.encode, request(three), { deadlineMs: 4000 });
      await waitForMetrics(service, (m) => m.value('loupe_encoder_queue_depth') === 3);
      const full = await callError(
        encoder,
        encoder.encode,
        request([1, 2, 3, 4].map((i) => noise(28, 28, i))),
      );
      expect(full.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(full.details).toMatch(
        /encoder queue is full: 3 sub-images waiting, this request adds 4, limit 6/,
      );
      expect(reason(full)).toBe('queue_full');

      expect((await expiring).code).toBe(status.DEADLINE_EXCEEDED);
      // The server's own deadline fires about when the client's does.
      const metrics = await waitForMetrics(
        service,
        (m) => m.value('loupe_encoder_queue_depth') === 0,
      );
      expect(metrics.value('loupe_encoder_sub_images_total')).toBe(0); // nothing ran
      expect(metrics.value('loupe_encoder_batch_size_count')).toBe(0);
    } finally {
      encoder.close();
      expect(await service.stop()).toBe(0);
    }
  });

  it('keeps each run within LOUPE_ENCODER_MEMORY_BUDGET_BYTES: concurrent calls wait their turn', async () => {
    // The smallest budget allowed: one 980×980 sub-image's run. Padded pairs of sub-images
    // (s×s and (s−14)×s: the masked attention's scores) whose runs fit it two at a time, not
    // three, while four of them are well within the pixel bound that budget gives (980²).
    const model = runMemoryModel(openCheckpoint(modelDir).config);
    const budget = largestRunBytes(model, 980);
    const sizesOf = (side: number) =>
      [side, side - 14, side, side - 14].map((height) => ({ height, width: side }));
    let side = 0;
    for (let s = 28; 4 * s * s <= 980 * 980; s += 14) {
      const sizes = sizesOf(s);
      if (
        estimateRunBytes(model, sizes.slice(0, 2)) <= budget &&
        estimateRunBytes(model, sizes.slice(0, 3)) > budget
      )
        side = s;
    }
    expect(side).toBeGreaterThan(0);
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_ENCODER_MAX_BATCH: '4',
      LOUPE_ENCODER_MAX_WAIT_MS: '1000',
      LOUPE_ENCODER_MEMORY_BUDGET_BYTES: String(budget),
    });
    const encoder = client(service.grpcAddress);
    try {
      const capacity = await service.waitForLog((e) => e.event === 'capacity');
      expect(capacity).toMatchObject({
        memoryBudgetBytes: budget,
        largestRunBytes: budget,
        maxBatchPixels: 980 * 980, // the default: as many 980×980 sub-images as fit, one
      });
      const before = await scrapeMetrics(service);
      expect(before.value('loupe_encoder_memory_budget_bytes', { state: 'limit' })).toBe(budget);
      expect(before.value('loupe_encoder_memory_budget_bytes', { state: 'reserved' })).toBe(0);

      const images = sizesOf(side).map(({ height, width }, i) => noise(width, height, 40 + i));
      const results = await Promise.all(
        images.map((image) => call(encoder, encoder.encode, request([image]))),
      );
      for (const r of results) expect(r.embeddings!.shape).toEqual([1, 64, 64]);

      const after = await scrapeMetrics(service);
      // Without the budget the four would make one batch (LOUPE_ENCODER_MAX_BATCH 4); with it
      // no batch holds more than two.
      const batches = after.value('loupe_encoder_batch_size_count')!;
      expect(after.value('loupe_encoder_batch_size_sum')).toBe(4);
      expect(batches).toBeGreaterThanOrEqual(2);
      expect(after.value('loupe_encoder_batch_size_bucket', { le: '2' })).toBe(batches);
      expect(after.value('loupe_encoder_memory_budget_bytes', { state: 'reserved' })).toBe(0);
      expect(after.value('loupe_encoder_sub_images_total')).toBe(4);
    } finally {
      encoder.close();
      expect(await service.stop()).toBe(0);
    }
  });

  it('exits 2 when one largest sub-image’s run does not fit LOUPE_ENCODER_MEMORY_BUDGET_BYTES', async () => {
    const largest = largestRunBytes(runMemoryModel(openCheckpoint(modelDir).config), 980);
    const result = await promisify(execFile)(process.execPath, [script], {
      env: {
        ...process.env,
        ...ephemeralPorts('ENCODER'),
        LOUPE_MODEL_DIR: modelDir,
        LOUPE_ENCODER_THREADS: '1',
        LOUPE_ENCODER_MEMORY_BUDGET_BYTES: String(largest - 1),
      },
    }).then(
      () => ({ code: 0, stderr: '' }),
      (error: { code: number; stderr: string }) => error,
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(
      `invalid configuration:\n  LOUPE_ENCODER_MEMORY_BUDGET_BYTES: must be at least ${largest} (the estimated memory of one 980×980 sub-image's run, the model's largest) (got ${largest - 1}, LOUPE_ENCODER_MEMORY_BUDGET_BYTES)`,
    );
  });

  it('drains the work in flight on SIGTERM, then exits 0', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_ENCODER_MAX_WAIT_MS: '300',
    });
    const encoder = client(service.grpcAddress);
    try {
      const pending = call(encoder, encoder.encode, request([noise(280, 280, 9)]));
      await waitForMetrics(service, (m) => m.value('loupe_encoder_requests_in_flight') === 1);
      const stopped = service.stop();
      expect((await pending).embeddings!.shape).toEqual([1, 64, 64]);
      expect(await stopped).toBe(0);
    } finally {
      encoder.close();
    }
  });

  it('exits 2 naming the variable when LOUPE_MODEL_DIR is unset or the model is missing', async () => {
    const run = (env: Record<string, string>) =>
      promisify(execFile)(process.execPath, [script], {
        env: { ...process.env, ...ephemeralPorts('ENCODER'), LOUPE_MODEL_DIR: '', ...env },
      }).then(
        () => ({ code: 0, stderr: '' }),
        (error: { code: number; stderr: string }) => error,
      );
    const unset = await run({});
    expect(unset.code).toBe(2);
    expect(unset.stderr).toMatch(/LOUPE_MODEL_DIR/);
    const missing = await run({ LOUPE_MODEL_DIR: join(work, 'nope') });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/nope/);
  });
});
