// Receive limits per method and requests that do not decode, on a real server over loopback:
// a message is refused from its 5-byte length prefix, before its bytes are kept.
import { connect, type IncomingHttpHeaders } from 'node:http2';
import { Client, credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import { DecoderService } from '../../proto/gen/loupe/v1/decoder.js';
import { PreprocessorClient, PreprocessorService } from '../../proto/gen/loupe/v1/preprocessor.js';
import { checkHealth, healthClient } from '../../test/helpers/grpc.js';
import { until } from '../../test/helpers/wait.js';
import {
  GrpcServer,
  type ByteBudget,
  type GrpcServerOptions,
  type RequestLimit,
} from './grpc-server.js';
import { createLogger } from './logger.js';
import { createRegistry } from './metrics.js';

class Budget implements ByteBudget {
  used = 0;
  constructor(readonly limit: number) {}
  reserve(bytes: number) {
    if (this.used + bytes > this.limit) return undefined;
    this.used += bytes;
    let done = false;
    return () => {
      if (!done) this.used -= bytes;
      done = true;
    };
  }
}

const reason = (error: ServiceError) => String(error.metadata.get('loupe-reason')[0] ?? '');
const EMPTY_RESPONSE = {
  subImages: [],
  split: false,
  subImagesHash: Buffer.alloc(0),
};

describe('GrpcServer request limits', () => {
  const servers: GrpcServer[] = [];
  const closers: Array<() => void> = [];
  afterEach(async () => {
    closers.splice(0).forEach((close) => close());
    await Promise.all(servers.splice(0).map((server) => server.shutdown(1000)));
  });

  /** A server whose Preprocess runs `handler`, with `limits`; resolves with its address. */
  async function start(
    limits: Record<string, RequestLimit>,
    handler: (image: Buffer) => Promise<void> = async () => {},
    options: Partial<GrpcServerOptions> = {},
  ): Promise<{ address: string; calls: () => number }> {
    const server = new GrpcServer({
      logger: createLogger({ service: 'test', level: 'silent' }),
      tracer: trace.getTracer('test'),
      registry: createRegistry('test'),
      maxMessageBytes: 8 * 1024 * 1024,
      reflectionProtos: [],
      ...options,
    });
    servers.push(server);
    let calls = 0;
    server.addService(
      'loupe.v1.Preprocessor',
      PreprocessorService,
      {
        preprocess: server.unary('Preprocess', async (request: { image: Buffer }) => {
          calls++;
          await handler(request.image);
          return EMPTY_RESPONSE;
        }),
        info: server.unary('Info', async () => ({})),
      },
      limits,
    );
    server.addService('loupe.v1.Decoder', DecoderService, {
      generate: server.serverStream('Generate', async () => {}),
      info: server.unary('Info', async () => ({})),
      load: server.unary('Load', async () => ({})),
    });
    const port = await server.listen('127.0.0.1', 0);
    server.setServing();
    return { address: `127.0.0.1:${port}`, calls: () => calls };
  }

  const preprocess = (client: PreprocessorClient, bytes: number, cancelAfterMs?: number) =>
    new Promise<ServiceError | undefined>((resolve) => {
      const call = client.preprocess(
        { image: Buffer.alloc(bytes, 7) },
        new Metadata(),
        { deadline: Date.now() + 10_000 },
        (error) => resolve(error ?? undefined),
      );
      if (cancelAfterMs !== undefined) setTimeout(() => call.cancel(), cancelAfterMs);
    });

  function clientFor(address: string): PreprocessorClient {
    const client = new PreprocessorClient(address, credentials.createInsecure(), {
      'grpc.max_send_message_length': 64 << 20,
    });
    closers.push(() => client.close());
    return client;
  }

  it("refuses a request over its method's limit with RESOURCE_EXHAUSTED, and serves the rest", async () => {
    const { address, calls } = await start({ preprocess: { maxBytes: 1000 } });
    const client = clientFor(address);
    // 1000 bytes of message: the image and its 3 bytes of field framing.
    expect(await preprocess(client, 997)).toBeUndefined();
    const error = (await preprocess(client, 998))!;
    expect(error.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(reason(error)).toBe('message_too_large');
    expect(error.details).toBe(
      '/loupe.v1.Preprocessor/Preprocess takes request messages of at most 1000 bytes; this one declares 1001',
    );
    expect(calls()).toBe(1);
    // Health keeps its own (small) limit and still answers.
    const health = healthClient(address);
    closers.push(() => health.close());
    expect((await checkHealth(health)).status).toBeDefined();
  });

  it('refuses from the length prefix, before the body is sent', async () => {
    const { address, calls } = await start({ preprocess: { maxBytes: 1 << 20 } });
    const session = connect(`http://${address}`);
    closers.push(() => session.destroy());
    const stream = session.request({
      ':method': 'POST',
      ':path': '/loupe.v1.Preprocessor/Preprocess',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    const headers = new Promise<IncomingHttpHeaders>((resolve) => stream.once('response', resolve));
    // Declares 1.5 GB and sends 5 bytes of it: only the prefix can have been judged.
    const prefix = Buffer.alloc(10);
    prefix.writeUInt32BE(1_500_000_000, 1);
    stream.write(prefix);
    const answer = await headers;
    expect(answer['grpc-status']).toBe(String(status.RESOURCE_EXHAUSTED));
    expect(decodeURIComponent(String(answer['grpc-message']))).toMatch(/declares 1500000000/);
    expect(answer['loupe-reason']).toBe('message_too_large');
    stream.close();
    expect(calls()).toBe(0);
  });

  it('reserves each request from the budget while its call lasts, refusing what does not fit', async () => {
    const budget = new Budget(10_000);
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    let entered: () => void = () => {};
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    const { address } = await start(
      { preprocess: { maxBytes: 1 << 20, budget, costFactor: 2 } },
      async (image) => {
        if (image.length === 3997) {
          entered();
          await held;
        }
      },
    );
    const client = clientFor(address);
    const first = preprocess(client, 3997); // 4000 bytes of message: 8000 reserved
    await inHandler;
    expect(budget.used).toBe(8000);
    const second = (await preprocess(client, 1997))!; // 2000 more: 4000, over the budget
    expect(second.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(reason(second)).toBe('memory_budget');
    expect(second.details).toMatch(/8000 of 10000 bytes in use/);
    expect(await preprocess(client, 997)).toBeUndefined(); // 2000: fits beside it
    release();
    expect(await first).toBeUndefined();
    // The reservation comes back as the call's stream closes, just after its answer.
    await until('the reservation to come back', () => budget.used === 0, { timeoutMs: 5_000 });
  });

  it('returns the reservation of a call its caller cancels', async () => {
    const budget = new Budget(1 << 20);
    const { address } = await start(
      { preprocess: { maxBytes: 1 << 20, budget } },
      () => new Promise(() => {}), // never answers
    );
    const error = (await preprocess(clientFor(address), 50_000, 100))!;
    expect(error.code).toBe(status.CANCELLED);
    await expect.poll(() => budget.used, { timeout: 2000 }).toBe(0);
  });

  it('ends a call whose declared bytes do not arrive in time, returning its reservation', async () => {
    const budget = new Budget(1 << 20);
    const { address, calls } = await start(
      { preprocess: { maxBytes: 1 << 20, budget } },
      async () => {},
      { defaultDeadlineMs: 300 },
    );
    const session = connect(`http://${address}`);
    closers.push(() => session.destroy());
    const stream = session.request({
      ':method': 'POST',
      ':path': '/loupe.v1.Preprocessor/Preprocess',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    const headers = new Promise<IncomingHttpHeaders>((resolve) => stream.once('response', resolve));
    const prefix = Buffer.alloc(15);
    prefix.writeUInt32BE(100_000, 1); // then 10 of its bytes, and nothing more
    stream.write(prefix);
    await expect.poll(() => budget.used).toBe(200_000);
    const started = Date.now();
    const answer = await headers;
    expect(Date.now() - started).toBeLessThan(2000);
    expect(answer['grpc-status']).toBe(String(status.DEADLINE_EXCEEDED));
    expect(answer['loupe-reason']).toBe('receive_timeout');
    expect(budget.used).toBe(0);
    expect(calls()).toBe(0);
    stream.close();
  });

  it('refuses to limit a method the service does not have', async () => {
    await expect(start({ preprocessTypo: { maxBytes: 1 } })).rejects.toThrow(
      /has no method `preprocessTypo`/,
    );
  });

  it('answers INVALID_ARGUMENT, not INTERNAL, for a uint64 past 2^53 - 1 and for broken bytes', async () => {
    const { address } = await start({});
    const raw = new Client(address, credentials.createInsecure());
    closers.push(() => raw.close());
    const same = (b: Buffer) => b;
    const generate = (body: Buffer) =>
      new Promise<ServiceError>((resolve) => {
        const stream = raw.makeServerStreamRequest(
          '/loupe.v1.Decoder/Generate',
          same,
          same,
          body,
          new Metadata(),
          { deadline: Date.now() + 5000 },
        );
        stream.on('data', () => {});
        stream.on('error', resolve);
        stream.on('end', () => resolve({ code: status.OK } as ServiceError));
      });
    // prompt_token_ids [5]; images [{ embeddings: { shape: [2^64 - 1] } }] (the seed takes
    // any uint64 now: a decimal string in JavaScript; a tensor's shape does not)
    const shape = Buffer.from([0x12, 10, ...Array<number>(9).fill(0xff), 0x01]);
    const image = Buffer.from([0x0a, shape.length, ...shape]);
    const request = Buffer.from([0x0a, 1, 5, 0x12, image.length, ...image]);
    const error = await generate(request);
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(reason(error)).toBe('integer_out_of_range');
    expect(error.details).toMatch(/64-bit integer outside/);
    // A length-delimited field that runs past the end of the message.
    const broken = await generate(Buffer.from([0x1a, 100, 1, 2]));
    expect(broken.code).toBe(status.INVALID_ARGUMENT);
    expect(reason(broken)).toBe('bad_request');
  });
});
