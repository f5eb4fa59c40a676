// The interceptors every handler runs in, on a real server and client over loopback.
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PreprocessorClient, PreprocessorService } from '../../proto/gen/loupe/v1/preprocessor.js';
import { invalidArgument } from './errors.js';
import { GrpcServer } from './grpc-server.js';
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
          imageTokens: 0,
          tokensPerSubImage: 64,
          source: undefined,
          contentHash: Buffer.alloc(0),
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
