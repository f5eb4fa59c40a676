// The preprocessor as a user runs it: a real process, real gRPC on an ephemeral loopback port.
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../../proto/gen/grpc/health/v1/health.js';
import {
  PreprocessorClient,
  type PreprocessResponse,
} from '../../proto/gen/loupe/v1/preprocessor.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import {
  APPROXIMATE_FORMATS,
  fixtureImage,
  loadPreprocessExpectations,
} from '../../test/helpers/fixtures.js';
import {
  call,
  callError,
  checkHealth,
  clientOptions,
  healthClient,
  loupeReason as reason,
} from '../../test/helpers/grpc.js';
import { PDF, pngDeclaring, SVG } from '../../test/helpers/images.js';
import { scrapeMetrics, waitForMetrics } from '../../test/helpers/metrics.js';
import { listServicesByReflection } from '../../test/helpers/reflection.js';
import { writeProcessorConfigs } from '../../test/helpers/checkpoint.js';
import { subImagesHash } from '../runtime/index.js';
import {
  builtService,
  ephemeralPorts,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from '../../test/helpers/service-process.js';

const script = builtService('preprocessor');
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const client = (address: string) =>
  new PreprocessorClient(address, credentials.createInsecure(), clientOptions);
const preprocess = (c: PreprocessorClient, image: Buffer, split?: boolean, deadlineMs?: number) =>
  call(c, c.preprocess, { image, split }, { deadlineMs });
const preprocessError = (
  c: PreprocessorClient,
  image: Buffer,
  split?: boolean,
  deadlineMs?: number,
) => callError(c, c.preprocess, { image, split }, { deadlineMs });

describe('preprocessor service', () => {
  let service: ServiceProcess;
  let pre: PreprocessorClient;

  beforeAll(async () => {
    service = await startServiceProcess(script, {
      ...ephemeralPorts('PREPROCESSOR'),
      LOUPE_PREPROCESSOR_WORKERS: '2',
      LOUPE_PREPROCESSOR_MAX_IMAGE_PIXELS: '20000000',
    });
    pre = client(service.grpcAddress);
  });
  afterAll(async () => {
    pre?.close();
    expect(await service?.stop()).toBe(0);
  });

  it('reports SERVING through grpc.health.v1 for the server and the service', async () => {
    const health = healthClient(service.grpcAddress);
    expect((await checkHealth(health)).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect((await checkHealth(health, 'loupe.v1.Preprocessor')).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    health.close();
  });

  it('lists its services through gRPC server reflection', async () => {
    const services = await listServicesByReflection(service.grpcAddress);
    expect(services).toEqual(expect.arrayContaining(['loupe.v1.Preprocessor']));
  });

  it('answers Info with the checkpoint defaults and the limits', async () => {
    const info = await call(pre, pre.info, {});
    expect(info).toMatchObject({
      defaultSplit: true,
      tokensPerSubImage: 64,
      shortestEdge: 378,
      longestEdge: 980,
      maxImagePixels: 20_000_000,
      maxFrames: 1000,
    });
    expect(info.formats).toEqual(
      expect.arrayContaining(['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif']),
    );
  });

  it('produces the reference sub-images for the whole corpus, split on and off', async () => {
    const expectations = loadPreprocessExpectations();
    expect(expectations.length).toBeGreaterThan(30);
    for (const expected of expectations) {
      const where = `${expected.file} split=${expected.split}`;
      const bytes = fixtureImage(expected.file);
      const response: PreprocessResponse = await preprocess(pre, bytes, expected.split);
      expect(response.split, where).toBe(expected.split);
      // The encoder's key for these sub-images, computed by the worker that made them.
      const hashed = subImagesHash(
        response.subImages.map((s) => ({ ...s, pixels: s.pixels!.data })),
      );
      expect(response.subImagesHash.toString('hex'), where).toBe(hashed.toString('hex'));
      const sizes = (subs: Array<{ height: number; width: number }>) =>
        subs.map(({ height, width }) => ({ height, width }));
      expect(sizes(response.subImages), where).toEqual(sizes(expected.subImages));
      if (APPROXIMATE_FORMATS.has(expected.source.format)) {
        response.subImages.forEach((s, i) => {
          const sum = s.pixels!.data.reduce((a, v) => a + v, 0);
          expect(Math.abs(sum / expected.subImages[i]!.sum - 1), where).toBeLessThan(5e-3);
        });
      } else {
        expect(
          response.subImages.map((s) => sha256(s.pixels!.data)),
          where,
        ).toEqual(expected.subImages.map((s) => s.sha256));
      }
      for (const sub of response.subImages) {
        expect(sub.pixels!.dtype).toBe(Dtype.DTYPE_UINT8);
        expect(sub.pixels!.shape).toEqual([3, sub.height, sub.width]);
      }
    }
  });

  it('defaults splitting to the checkpoint and lets the request override it', async () => {
    const image = fixtureImage('jpeg-1600x1067.jpg');
    expect((await preprocess(pre, image)).subImages).toHaveLength(5);
    expect((await preprocess(pre, image, false)).subImages).toHaveLength(1);
  });

  it.each([
    ['empty input', Buffer.alloc(0), 'empty', /empty/],
    [
      'random bytes',
      Buffer.from('definitely not an image, just text'),
      'unsupported_format',
      /format/,
    ],
    ['SVG (can reference external resources)', SVG, 'unsupported_format', /svg|format/i],
    ['PDF', PDF, 'unsupported_format', /pdf|format/i],
    [
      'a pixel bomb (header declares 100000x100000)',
      pngDeclaring(100_000, 100_000),
      'too_many_pixels',
      /pixels/,
    ],
  ])(
    'refuses %s with INVALID_ARGUMENT naming the cause',
    async (_name, bytes, expectedReason, message) => {
      const error = await preprocessError(pre, bytes);
      expect(error.code).toBe(status.INVALID_ARGUMENT);
      expect(reason(error)).toBe(expectedReason);
      expect(error.details).toMatch(message);
    },
  );

  it('refuses truncated and corrupt images', async () => {
    const jpeg = fixtureImage('jpeg-1600x1067.jpg');
    const truncated = await preprocessError(pre, jpeg.subarray(0, Math.floor(jpeg.length / 2)));
    expect(truncated.code).toBe(status.INVALID_ARGUMENT);
    expect(['truncated', 'corrupt']).toContain(reason(truncated));

    const corrupt = Buffer.from(jpeg);
    corrupt.fill(0x55, 600, 4000); // inside the entropy-coded data and tables
    const corrupted = await preprocessError(pre, corrupt);
    expect(corrupted.code).toBe(status.INVALID_ARGUMENT);
    expect(['truncated', 'corrupt']).toContain(reason(corrupted));
  });

  it('still serves after bad input (nothing crashed)', async () => {
    const response = await preprocess(pre, fixtureImage('png-378x378.png'), false);
    expect(response.subImages).toHaveLength(1);
  });

  it('exports Prometheus metrics: images, bytes, latency, failures by reason, in flight', async () => {
    const { text } = await scrapeMetrics(service);
    expect(text).toMatch(/loupe_preprocessor_images_total\{[^}]*split="true"[^}]*\} [1-9]/);
    expect(text).toMatch(/loupe_preprocessor_input_bytes_total\{[^}]*\} [1-9]/);
    expect(text).toMatch(/loupe_preprocessor_latency_seconds_count\{[^}]*\} [1-9]/);
    expect(text).toMatch(
      /loupe_preprocessor_failures_total\{[^}]*reason="too_many_pixels"[^}]*\} 1/,
    );
    expect(text).toMatch(/loupe_preprocessor_requests_in_flight\{[^}]*\} 0/);
    expect(text).toMatch(/loupe_grpc_server_handled_total\{[^}]*method="Preprocess"[^}]*code="OK"/);
  });

  it('keeps answering health checks and metrics promptly while every worker is busy', async () => {
    const heavy = fixtureImage('jpeg-2400x1600.jpg');
    const health = healthClient(service.grpcAddress);
    let settled = false;
    const load = Promise.all(
      Array.from({ length: 12 }, () => preprocess(pre, heavy, true, 120_000)),
    ).finally(() => (settled = true));
    const latencies: number[] = [];
    let checksDuringLoad = 0;
    while (!settled) {
      const started = performance.now();
      expect((await checkHealth(health)).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      await scrapeMetrics(service);
      latencies.push(performance.now() - started);
      if (!settled) checksDuringLoad++;
    }
    const results = await load;
    health.close();
    expect(results.every((r) => r.subImages.length === 5)).toBe(true);
    expect(checksDuringLoad).toBeGreaterThan(3);
    // Each image takes far longer than this; a blocked event loop would show here.
    expect(Math.max(...latencies)).toBeLessThan(1000);
  });

  it('fails a call whose deadline passes while it waits, with DEADLINE_EXCEEDED', async () => {
    const heavy = fixtureImage('jpeg-2400x1600.jpg');
    const error = await preprocessError(pre, heavy, true, 5);
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
  });
});

describe('preprocessor admission, configuration and shutdown', () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));
  // A test that fails before its own stop() must not leave its process running.
  afterEach(stopServiceProcesses);

  it('answers RESOURCE_EXHAUSTED when the queue is full, and serves the rest', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('PREPROCESSOR'),
      LOUPE_PREPROCESSOR_WORKERS: '1',
      LOUPE_PREPROCESSOR_MAX_QUEUE: '1',
    });
    const pre = client(service.grpcAddress);
    const heavy = fixtureImage('jpeg-2400x1600.jpg');
    const outcomes = await Promise.allSettled(
      Array.from({ length: 6 }, () => preprocess(pre, heavy, true, 120_000)),
    );
    const refused = outcomes
      .filter((o) => o.status === 'rejected')
      .map((o) => o.reason as ServiceError);
    expect(outcomes.filter((o) => o.status === 'fulfilled').length).toBeGreaterThanOrEqual(2);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    for (const error of refused) {
      expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(error.details).toMatch(/queue is full.*limit 2/);
    }
    pre.close();
    expect(await service.stop()).toBe(0);
  });

  it('refuses files with more frames than allowed, and reads only the first otherwise', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('PREPROCESSOR'),
      LOUPE_PREPROCESSOR_MAX_FRAMES: '2',
    });
    const pre = client(service.grpcAddress);
    const error = await preprocessError(pre, fixtureImage('gif-anim3-160x120.gif'));
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(reason(error)).toBe('too_many_frames');
    expect(error.details).toMatch(/3 frames, over the limit of 2/);
    expect(
      (await preprocess(pre, fixtureImage('gif-trns-200x150.gif'), false)).subImages,
    ).toHaveLength(1);
    pre.close();
    expect(await service.stop()).toBe(0);
  });

  it('refuses an image over the byte limit, naming the size and the limit', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('PREPROCESSOR'),
      LOUPE_PREPROCESSOR_MAX_IMAGE_BYTES: '50000',
    });
    const pre = client(service.grpcAddress);
    // Far over: refused from the message's length prefix, before its bytes are kept.
    const image = fixtureImage('jpeg-1600x1067.jpg');
    const error = await preprocessError(pre, image);
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(reason(error)).toBe('too_large');
    expect(error.details).toMatch(
      new RegExp(
        `^\`image\` is over the limit of 50000 bytes \\(the request declares ${image.length + 4}\\)$`,
      ),
    );
    // Just over: the message is received, and the image's own size is named.
    const justOver = await preprocessError(pre, image.subarray(0, 50_001));
    expect(justOver.code).toBe(status.INVALID_ARGUMENT);
    expect(reason(justOver)).toBe('too_large');
    expect(justOver.details).toBe('`image` is 50001 bytes, over the limit of 50000');
    pre.close();
    expect(await service.stop()).toBe(0);
  });

  it('reads the split default from the checkpoint directory', async () => {
    const dir = writeProcessorConfigs({ split: false });
    dirs.push(dir);
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('PREPROCESSOR'),
      LOUPE_MODEL_DIR: dir,
    });
    const pre = client(service.grpcAddress);
    const image = fixtureImage('jpeg-1600x1067.jpg');
    const unsplit = await preprocess(pre, image);
    expect(unsplit.split).toBe(false);
    expect(unsplit.subImages).toHaveLength(1);
    const split = await preprocess(pre, image, true);
    expect(split.subImages).toHaveLength(5);
    pre.close();
    expect(await service.stop()).toBe(0);
  });

  it('refuses to start with an invalid variable, naming it', async () => {
    await expect(
      startServiceProcess(
        script,
        { ...ephemeralPorts('PREPROCESSOR'), LOUPE_PREPROCESSOR_WORKERS: 'lots' },
        20_000,
      ),
    ).rejects.toThrow(/LOUPE_PREPROCESSOR_WORKERS: must be an integer \(got "lots"\)/);
  });

  it('refuses to start with a broken checkpoint configuration, naming the file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loupe-ckpt-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'preprocessor_config.json'), '{"do_image_splitting": "yes"');
    await expect(
      startServiceProcess(
        script,
        { ...ephemeralPorts('PREPROCESSOR'), LOUPE_MODEL_DIR: dir },
        20_000,
      ),
    ).rejects.toThrow(/preprocessor_config\.json/);
  });

  it('drains in-flight calls on SIGTERM, refuses new ones, exits 0, and exports the trace it continued', async () => {
    // A local OTLP/HTTP receiver (JSON), so the service's spans can be checked.
    const bodies: string[] = [];
    const receiver = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString('utf8')));
      req.on('end', () => {
        bodies.push(body);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const otlp = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;

    const service = await startServiceProcess(script, {
      ...ephemeralPorts('PREPROCESSOR'),
      LOUPE_PREPROCESSOR_WORKERS: '1',
      LOUPE_SHUTDOWN_GRACE_MS: '60000',
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp,
    });
    const pre = client(service.grpcAddress);
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const metadata = new Metadata();
    metadata.set('traceparent', `00-${traceId}-00f067aa0ba902b7-01`);
    const heavy = fixtureImage('jpeg-2400x1600.jpg');
    const inFlight = Array.from({ length: 3 }, () =>
      call(pre, pre.preprocess, { image: heavy, split: true }, { metadata, deadlineMs: 120_000 }),
    );
    // Wait until the work is really in flight: the in-flight gauge says so.
    await waitForMetrics(service, (m) => m.value('loupe_preprocessor_requests_in_flight') === 3, {
      timeoutMs: 60_000,
    });
    service.child.kill('SIGTERM');
    await service.waitForLog((e) => e.msg === 'shutting down');
    const results = await Promise.all(inFlight);
    expect(results.every((r) => r.subImages.length === 5)).toBe(true);
    expect(await service.exited).toBe(0);
    const late = await callError(
      pre,
      pre.preprocess,
      { image: heavy, split: true },
      { deadlineMs: 2_000 },
    );
    expect(late.code).toBe(status.UNAVAILABLE);
    pre.close();
    receiver.close();
    const spans = bodies.join('\n');
    expect(spans).toContain(traceId);
    expect(spans).toContain('Preprocess');
  });
});
