// The interceptors every handler runs in, and the server's options (reflection, stream cap),
// on a real server and client over loopback.
import { connect, type ClientHttp2Session, type Settings } from 'node:http2';
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../../proto/gen/grpc/health/v1/health.js';
import { PreprocessorClient, PreprocessorService } from '../../proto/gen/loupe/v1/preprocessor.js';
import { checkHealth, healthClient } from '../../test/helpers/grpc.js';
import { listServicesByReflection } from '../../test/helpers/reflection.js';
import { loadCommonConfig } from './config.js';
import { invalidArgument } from './errors.js';
import { GrpcServer, type GrpcServerOptions } from './grpc-server.js';
import { createLogger } from './logger.js';
import { createRegistry } from './metrics.js';
import { initTracing, type Tracing } from './tracing.js';

describe('GrpcServer interceptors', () => {
  const exporter = new InMemorySpanExporter();
  let tracing: Tracing;
  let server: GrpcServer;
  let client: PreprocessorClient;
  const registry = createRegistry('test');
  let release: () => void = () => {};
  const started: Array<() => void> = [];

  beforeAll(async () => {
    tracing = initTracing({
      serviceName: 'test',
      spanProcessors: [new SimpleSpanProcessor(exporter)],
    });
    server = new GrpcServer({
      logger: createLogger({ service: 'test', level: 'silent' }),
      tracer: tracing.tracer,
      registry,
      maxMessageBytes: 8 * 1024 * 1024,
      reflectionProtos: ['loupe/v1/preprocessor.proto'],
    });
    server.addService('loupe.v1.Preprocessor', PreprocessorService, {
      // `preprocess` misbehaves on purpose, depending on the first byte of the image.
      preprocess: server.unary('Preprocess', async (request: { image: Buffer }, ctx) => {
        const mode = request.image[0];
        if (mode === 1) throw invalidArgument('`image` is bad in a way the caller can fix', 'bad');
        if (mode === 2) throw new Error('secret internal detail');
        if (mode === 3) {
          started.forEach((f) => f());
          await new Promise<void>((resolve, reject) => {
            release = resolve;
            ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason as Error));
          });
        }
        return {
          subImages: [],
          split: false,
          subImagesHash: Buffer.alloc(0),
        };
      }),
      info: server.unary('Info', async () => {
        throw new Error('not used');
      }),
    });
    const port = await server.listen('127.0.0.1', 0);
    server.setServing();
    client = new PreprocessorClient(`127.0.0.1:${port}`, credentials.createInsecure());
  });

  afterAll(async () => {
    client.close();
    await server.shutdown(1000); // already down after the last test; a second call is harmless
    await tracing.shutdown();
  });

  const preprocess = (
    image: number[],
    options: { deadlineMs?: number; metadata?: Metadata } = {},
  ) =>
    new Promise<unknown>((resolve, reject) =>
      client.preprocess(
        { image: Buffer.from(image) },
        options.metadata ?? new Metadata(),
        { deadline: Date.now() + (options.deadlineMs ?? 5000) },
        (error, response) => (error ? reject(error) : resolve(response)),
      ),
    );
  const failure = (image: number[], options?: { deadlineMs?: number }) =>
    preprocess(image, options).then(
      () => {
        throw new Error('expected a failure');
      },
      (error: ServiceError) => error,
    );

  it('sends a ServiceError as its status, message and reason', async () => {
    const error = await failure([1]);
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details).toBe('`image` is bad in a way the caller can fix');
    expect(error.metadata.get('loupe-reason')).toEqual(['bad']);
  });

  it('turns any other error into INTERNAL without leaking its message', async () => {
    const error = await failure([2]);
    expect(error.code).toBe(status.INTERNAL);
    expect(error.details).toBe('internal error');
    expect(error.details).not.toContain('secret');
  });

  it('aborts the handler when the deadline passes', async () => {
    const error = await failure([3], { deadlineMs: 200 });
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
  });

  it('continues the caller trace and records one server span per call', async () => {
    exporter.reset();
    const metadata = new Metadata();
    metadata.set('traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    await preprocess([0], { metadata });
    const spans = exporter
      .getFinishedSpans()
      .filter((span) => span.spanContext().traceId === '0af7651916cd43dd8448eb211c80319c');
    expect(spans).toHaveLength(1);
    expect(spans[0]!.name).toBe('Preprocess');
    expect(spans[0]!.spanContext().traceId).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(spans[0]!.parentSpanContext?.spanId).toBe('b7ad6b7169203331');
  });

  it('counts calls by method and status code', async () => {
    const text = await registry.metrics();
    expect(text).toMatch(
      /loupe_grpc_server_handled_total\{[^}]*method="Preprocess"[^}]*code="INVALID_ARGUMENT"[^}]*\} 1/,
    );
    expect(text).toMatch(
      /loupe_grpc_server_handled_total\{[^}]*method="Preprocess"[^}]*code="INTERNAL"[^}]*\} 1/,
    );
  });

  it('on shutdown waits for the in-flight call, then refuses new ones', async () => {
    const inHandler = new Promise<void>((resolve) => started.push(resolve));
    const pending = preprocess([3], { deadlineMs: 10_000 });
    await inHandler;
    const stopping = server.shutdown(10_000);
    release();
    await expect(pending).resolves.toBeDefined();
    await expect(stopping).resolves.toEqual({ drained: true });
    expect((await failure([0])).code).toBe(status.UNAVAILABLE);
  });
});

describe('GrpcServer options', () => {
  const servers: GrpcServer[] = [];
  const closers: Array<() => void> = [];
  afterEach(async () => {
    closers.splice(0).forEach((close) => close());
    await Promise.all(servers.splice(0).map((server) => server.shutdown(1000)));
  });

  /** A started server whose Preprocess runs `handler`; resolves with its address. */
  async function start(
    options: Partial<GrpcServerOptions>,
    handler: (image: Buffer) => Promise<void> = async () => {},
  ): Promise<string> {
    const server = new GrpcServer({
      logger: createLogger({ service: 'test', level: 'silent' }),
      tracer: trace.getTracer('test'),
      registry: createRegistry('test'),
      maxMessageBytes: 8 * 1024 * 1024,
      reflectionProtos: ['loupe/v1/preprocessor.proto'],
      ...options,
    });
    servers.push(server);
    server.addService('loupe.v1.Preprocessor', PreprocessorService, {
      preprocess: server.unary('Preprocess', async (request: { image: Buffer }) => {
        await handler(request.image);
        return {
          subImages: [],
          split: false,
          subImagesHash: Buffer.alloc(0),
        };
      }),
      info: server.unary('Info', async () => {
        throw new Error('not used');
      }),
    });
    const port = await server.listen('127.0.0.1', 0);
    server.setServing();
    return `127.0.0.1:${port}`;
  }

  /** The SETTINGS the server sends a fresh HTTP/2 connection. */
  async function serverSettings(address: string): Promise<Settings> {
    const session: ClientHttp2Session = connect(`http://${address}`);
    try {
      return await new Promise<Settings>((resolve, reject) => {
        session.once('remoteSettings', resolve);
        session.once('error', reject);
      });
    } finally {
      session.destroy();
    }
  }

  it('serves reflection only when enabled', async () => {
    const off = await start({});
    await expect(listServicesByReflection(off)).rejects.toMatchObject({
      code: status.UNIMPLEMENTED,
    });
    const on = await start({ reflection: true });
    expect(await listServicesByReflection(on)).toContain('loupe.v1.Preprocessor');
    // Health is served either way.
    const health = healthClient(off);
    closers.push(() => health.close());
    expect((await checkHealth(health, 'loupe.v1.Preprocessor')).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
  });

  it('announces its cap on concurrent streams per connection, 100 unless told', async () => {
    expect((await serverSettings(await start({}))).maxConcurrentStreams).toBe(100);
    const capped = await start({ maxConcurrentStreams: 3 });
    expect((await serverSettings(capped)).maxConcurrentStreams).toBe(3);
  });

  it('with a cap of 1, a second call on the same connection waits for the first to end', async () => {
    const events: string[] = [];
    let entered: () => void = () => {};
    const inFirst = new Promise<void>((resolve) => (entered = resolve));
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    const address = await start({ maxConcurrentStreams: 1 }, async (image) => {
      events.push(`start ${image[0]}`);
      if (image[0] === 1) {
        entered();
        await released;
      }
      events.push(`end ${image[0]}`);
    });
    // One client, one connection; a second client with its own connection as a barrier.
    const client = new PreprocessorClient(address, credentials.createInsecure());
    closers.push(() => client.close());
    const own = new PreprocessorClient(address, credentials.createInsecure(), {
      'grpc.use_local_subchannel_pool': 1,
    });
    closers.push(() => own.close());
    const preprocess = (c: PreprocessorClient, first: number) =>
      new Promise<void>((resolve, reject) =>
        c.preprocess(
          { image: Buffer.from([first]) },
          new Metadata(),
          { deadline: Date.now() + 10_000 },
          (error) => (error ? reject(error) : resolve()),
        ),
      );
    const first = preprocess(client, 1);
    try {
      await inFirst;
      const second = preprocess(client, 2);
      // A call on another connection completes while the second still waits for a stream.
      await preprocess(own, 3);
      expect(events).toEqual(['start 1', 'start 3', 'end 3']);
      release();
      await Promise.all([first, second]);
    } finally {
      release();
    }
    expect(events).toEqual(['start 1', 'start 3', 'end 3', 'end 1', 'start 2', 'end 2']);
  });

  it('takes both settings from the common configuration', () => {
    const defaults = loadCommonConfig({});
    expect(defaults.grpc.reflection).toBe(false);
    expect(defaults.grpc.maxConcurrentStreams).toBe(100);
    const set = loadCommonConfig({
      LOUPE_GRPC_REFLECTION: 'true',
      LOUPE_GRPC_MAX_CONCURRENT_STREAMS: '8',
    });
    expect([set.grpc.reflection, set.grpc.maxConcurrentStreams]).toEqual([true, 8]);
    expect(() => loadCommonConfig({ LOUPE_GRPC_MAX_CONCURRENT_STREAMS: '0' })).toThrow(
      /LOUPE_GRPC_MAX_CONCURRENT_STREAMS/,
    );
  });
});
