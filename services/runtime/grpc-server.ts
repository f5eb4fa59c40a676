// gRPC server bootstrap: message size and stream limits (a receive limit per method, checked
// on the length prefix before a message is buffered), health, reflection (when enabled),
// TLS with client certificates and a plaintext health port (when configured), and the
// interceptors every handler runs inside — request id, tracing, deadline, cancellation, error
// mapping, metrics and in-flight tracking for a graceful drain.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import {
  Metadata,
  Server,
  ServerCredentials,
  ServerInterceptingCall,
  status,
  type handleServerStreamingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type handleUnaryCall,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { context, SpanKind, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import { HealthService } from '../../proto/gen/grpc/health/v1/health.js';
import type { HandlerContext } from './handler-context.js';
import { ServiceError, toStatus } from './errors.js';
import { serverTlsCredentials, type CertificateFiles } from './grpc-tls.js';
import { HealthRegistry, ServingStatus } from './health.js';
import type { Logger } from './logger.js';
import { createRpcMetrics, type Registry, type RpcMetrics } from './metrics.js';
import { protoRoot } from './paths.js';
import { extractTraceContext } from './tracing.js';

export type UnaryHandler<Req, Res> = (request: Req, ctx: HandlerContext) => Promise<Res>;
export type ServerStreamHandler<Req, Res> = (
  request: Req,
  ctx: HandlerContext,
  /** Writes one message; resolves when the transport accepted it (backpressure). */
  send: (message: Res) => Promise<void>,
) => Promise<void>;

export interface GrpcServerOptions {
  logger: Logger;
  tracer: Tracer;
  registry: Registry;
  /** Largest message received or sent, bytes. */
  maxMessageBytes: number;
  /** .proto files (relative to proto/) served by reflection. */
  reflectionProtos: string[];
  /**
   * Serve gRPC server reflection (grpc.reflection.v1/v1alpha): handy for grpcurl, but it
   * describes every method to whoever can connect, so it is off unless asked for.
   */
  reflection?: boolean;
  /**
   * Streams (calls) one connection may have open at once, announced to the client in HTTP/2
   * SETTINGS; further calls wait on the client until one ends. Default 100.
   */
  maxConcurrentStreams?: number;
  /** Applied when a caller sets no deadline, so no call runs forever; ms. */
  defaultDeadlineMs?: number;
  /**
   * The internal token callers must send (`authorization: Bearer <token>`); calls without it
   * get UNAUTHENTICATED. Health (and reflection, when on) stay open. Unset: no check.
   */
  token?: string;
  /**
   * Serve TLS and require client certificates that chain to the CA (mTLS), following these
   * files as they change (grpc-tls.ts). Unset: plaintext.
   */
  tls?: CertificateFiles;
  /**
   * Also serve grpc.health.v1 alone, in plaintext, on this port (0: a free one), for probes
   * that cannot speak TLS; it reports from the same registry as the main port.
   */
  healthPort?: number;
}

/** Concurrent streams per connection when the options name none. */
export const DEFAULT_MAX_CONCURRENT_STREAMS = 100;

/** A budget of bytes in memory: reserves them, or answers undefined when they do not fit. */
export interface ByteBudget {
  reserve(bytes: number): (() => void) | undefined;
  readonly limit: number;
  readonly used: number;
}

/**
 * A ByteBudget: bytes reserved before they are allocated and returned when they are let go,
 * all against one limit; listeners hear of every release (to start what now fits).
 */
export class MemoryBudget implements ByteBudget {
  #used = 0;
  readonly #onRelease = new Set<() => void>();

  constructor(readonly limit: number) {}

  get used(): number {
    return this.#used;
  }

  /** Reserves `bytes`; returns the release (idempotent), or undefined when they do not fit. */
  reserve(bytes: number): (() => void) | undefined {
    if (this.#used + bytes > this.limit) return undefined;
    this.#used += bytes;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#used -= bytes;
      for (const listener of this.#onRelease) listener();
    };
  }

  /** Calls `listener` after every release. */
  onRelease(listener: () => void): void {
    this.#onRelease.add(listener);
  }
}

/** What one method may receive. */
export interface RequestLimit {
  /**
   * Largest request message, bytes (the serialized protobuf, without the 5-byte gRPC frame
   * header). A call whose length prefix declares more is refused with RESOURCE_EXHAUSTED
   * (`loupe-reason: message_too_large`) before any of its bytes are kept.
   */
  maxBytes: number;
  /**
   * Reserve `costFactor` × the declared length from this budget as soon as the prefix is read,
   * for as long as the call lasts (its bytes are held while they arrive, then as the parsed
   * request); a message that does not fit is refused with RESOURCE_EXHAUSTED
   * (`loupe-reason: memory_budget`) before it is buffered.
   */
  budget?: ByteBudget;
  /** Default 2: the frames as they arrive, then the joined message they are copied into. */
  costFactor?: number;
  /**
   * The error for a message over `maxBytes`, given its declared length; default
   * RESOURCE_EXHAUSTED naming the method and both sizes (`loupe-reason: message_too_large`).
   */
  tooLarge?: (declaredBytes: number) => ServiceError;
}

/** Requests of health checks and reflection: a service name or a file name, never large. */
const SMALL_REQUEST_BYTES = 64 * 1024;
const HEALTH_PATHS = ['/grpc.health.v1.Health/Check', '/grpc.health.v1.Health/Watch'];
const REFLECTION_PATHS = [
  '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
  '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo',
];

/** A request whose bytes did not decode (a field out of range, broken wire format). */
class UndecodableRequest {
  constructor(readonly message: string) {}
}

export class GrpcServer {
  readonly health = new HealthRegistry();
  /** The certificates in use, when TLS is on (reload() re-reads the files now). */
  readonly certificates: CertificateFiles | undefined;
  private readonly server: Server;
  #healthServer: Server | undefined;
  #healthPort: number | undefined;
  private readonly metrics: RpcMetrics;
  private readonly inFlight = new Set<AbortController>();
  private drained: (() => void) | undefined;
  private shuttingDown = false;
  /** Request limits by method path (`/package.Service/Method`). */
  readonly #requestLimits = new Map<string, RequestLimit>();
  #limitsUnavailableLogged = false;

  constructor(private readonly options: GrpcServerOptions) {
    for (const path of HEALTH_PATHS)
      this.#requestLimits.set(path, { maxBytes: SMALL_REQUEST_BYTES });
    for (const path of REFLECTION_PATHS)
      this.#requestLimits.set(path, { maxBytes: SMALL_REQUEST_BYTES });
    this.server = new Server({
      interceptors: [this.#limitRequests],
      // The ceiling for every method; RequestLimit lowers it per method.
      'grpc.max_receive_message_length': options.maxMessageBytes,
      'grpc.max_send_message_length': options.maxMessageBytes,
      // Clients re-resolve when connections age out, so new pods get traffic.
      'grpc.max_connection_age_ms': 5 * 60_000,
      // Calls in progress on an aged connection may run to their default deadline (a long
      // decoder stream would otherwise be cut after the grace period).
      'grpc.max_connection_age_grace_ms': Math.max(60_000, options.defaultDeadlineMs ?? 0),
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.max_concurrent_streams': options.maxConcurrentStreams ?? DEFAULT_MAX_CONCURRENT_STREAMS,
    });
    this.certificates = options.tls;
    this.metrics = createRpcMetrics(options.registry);
    this.server.addService(HealthService, this.health.implementation);
    if (options.reflection) {
      const definitions = loadSync(
        options.reflectionProtos.map((file) => join(protoRoot(), file)),
        { includeDirs: [protoRoot()] },
      );
      new ReflectionService(definitions).addToServer(this.server);
    }
    this.health.set('', ServingStatus.NOT_SERVING);
  }

  /**
   * Registers a service; it reports NOT_SERVING until `setServing()`. `requestLimits`, by the
   * definition's method keys, bounds what each method receives (see RequestLimit); a method
   * without one takes messages up to the server's `maxMessageBytes`. A request that does not
   * decode (an integer beyond what its field's type holds here, a broken wire format) is
   * answered INVALID_ARGUMENT, not the INTERNAL grpc-js would send.
   */
  addService(
    name: string,
    definition: ServiceDefinition,
    implementation: UntypedServiceImplementation,
    requestLimits: Readonly<Record<string, RequestLimit>> = {},
  ): void {
    const wrapped: Record<string, ServiceDefinition[string]> = {};
    for (const [key, method] of Object.entries(definition)) {
      const decode = method.requestDeserialize;
      wrapped[key] = {
        ...method,
        requestDeserialize: (bytes: Buffer) => {
          try {
            return decode(bytes);
          } catch (error) {
            return new UndecodableRequest(error instanceof Error ? error.message : String(error));
          }
        },
      };
      const limit = requestLimits[key];
      if (limit !== undefined) this.#requestLimits.set(method.path, limit);
    }
    for (const key of Object.keys(requestLimits)) {
      if (!(key in definition)) throw new Error(`${name} has no method \`${key}\` to limit`);
    }
    this.server.addService(wrapped, implementation);
    this.health.set(name, ServingStatus.NOT_SERVING);
  }

  /**
   * The interceptor applying RequestLimit. grpc-js takes one receive limit per server
   * (`grpc.max_receive_message_length`); a method's own is applied where grpc-js reads the
   * 5-byte frame header (its call's stream decoder), so a message declaring more than the
   * method takes, or more than the budget has left, is refused on its length prefix, and the
   * rest of its bytes are discarded as they arrive instead of being joined into one buffer.
   */
  readonly #limitRequests: ServerInterceptor = (method, call) => {
    const limit = this.#requestLimits.get(method.path);
    if (limit === undefined) return new ServerInterceptingCall(call);
    const releases: Array<() => void> = [];
    let slow: NodeJS.Timeout | undefined;
    const releaseAll = () => {
      clearTimeout(slow);
      releases.splice(0).forEach((release) => release());
    };
    const intercepted = new ServerInterceptingCall(call, {
      start: (next) => next({ onCancel: releaseAll }),
      sendStatus: (status, next) => {
        releaseAll();
        next(status);
      },
    });
    const base = baseCall(call);
    const decoder = base?.decoder;
    if (base === undefined || typeof decoder?.write !== 'function') {
      if (!this.#limitsUnavailableLogged) {
        this.#limitsUnavailableLogged = true;
        this.options.logger.warn(
          'this grpc-js version hides its stream decoder: per-method receive limits are off, the server-wide limit applies',
        );
      }
      return intercepted;
    }
    const refuse = (error: ServiceError) => {
      const { code, details, metadata } = toStatus(error);
      base.sendStatus({ code, details, metadata: metadata ?? new Metadata() });
    };
    const write = decoder.write.bind(decoder);
    const header = Buffer.alloc(5);
    let headerRead = 0;
    let bodyLeft = 0;
    // A message must arrive within the default deadline of its prefix (a caller's own deadline
    // also ends the call): one declared and then trickled, or never sent, would otherwise hold
    // its reservation for as long as the connection lives.
    const receiveMs = this.options.defaultDeadlineMs ?? 60_000;
    decoder.write = (data: Buffer): Buffer[] => {
      // Follow the framing (flag, uint32 length, message) to see each length prefix first.
      for (let at = 0; at < data.length;) {
        if (bodyLeft > 0) {
          const take = Math.min(bodyLeft, data.length - at);
          bodyLeft -= take;
          at += take;
          if (bodyLeft === 0) clearTimeout(slow);
          continue;
        }
        const take = Math.min(5 - headerRead, data.length - at);
        data.copy(header, headerRead, at, at + take);
        headerRead += take;
        at += take;
        if (headerRead < 5) break;
        headerRead = 0;
        bodyLeft = header.readUInt32BE(1);
        if (bodyLeft > limit.maxBytes) {
          refuse(
            limit.tooLarge?.(bodyLeft) ??
              new ServiceError(
                status.RESOURCE_EXHAUSTED,
                `${method.path} takes request messages of at most ${limit.maxBytes} bytes; this one declares ${bodyLeft}`,
                'message_too_large',
              ),
          );
          return [];
        }
        if (limit.budget !== undefined) {
          const cost = bodyLeft * (limit.costFactor ?? 2);
          const release = limit.budget.reserve(cost);
          if (release === undefined) {
            refuse(
              new ServiceError(
                status.RESOURCE_EXHAUSTED,
                `${method.path}: a ${bodyLeft}-byte request does not fit in the memory budget now (${limit.budget.used} of ${limit.budget.limit} bytes in use); retry shortly`,
                'memory_budget',
              ),
            );
            return [];
          }
          releases.push(release);
        }
        if (bodyLeft > 0) {
          clearTimeout(slow);
          slow = setTimeout(() => {
            refuse(
              new ServiceError(
                status.DEADLINE_EXCEEDED,
                `${method.path}: the request's ${header.readUInt32BE(1)} bytes did not arrive within ${receiveMs} ms`,
                'receive_timeout',
              ),
            );
            releaseAll();
          }, receiveMs);
          slow.unref();
        }
      }
      return write(data);
    };
    return intercepted;
  };

  setServing(): void {
    this.health.setAll(ServingStatus.SERVING);
  }

  /** Binds the gRPC port (and the health port, when set); resolves with the gRPC port. */
  async listen(host: string, port: number): Promise<number> {
    const credentials = this.certificates
      ? serverTlsCredentials(this.certificates)
      : ServerCredentials.createInsecure();
    const bound = await bind(this.server, host, port, credentials);
    if (this.options.healthPort !== undefined) {
      this.#healthServer = new Server({ 'grpc.max_receive_message_length': SMALL_REQUEST_BYTES });
      this.#healthServer.addService(HealthService, this.health.implementation);
      this.#healthPort = await bind(
        this.#healthServer,
        host,
        this.options.healthPort,
        ServerCredentials.createInsecure(),
      );
    }
    return bound;
  }

  /** The plaintext health port, once listening; undefined when there is none. */
  get healthPort(): number | undefined {
    return this.#healthPort;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /**
   * Graceful shutdown: health NOT_SERVING, stop accepting calls, let in-flight calls finish
   * within `graceMs`, then cancel what remains and close.
   */
  async shutdown(graceMs: number): Promise<{ drained: boolean }> {
    this.shuttingDown = true;
    this.health.setAll(ServingStatus.NOT_SERVING);
    this.health.closeWatchers();
    const tryShutdown = new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    const drained =
      this.inFlight.size === 0
        ? Promise.resolve()
        : new Promise<void>((resolve) => (this.drained = resolve));
    const deadline = Date.now() + graceMs;
    const outcome = await raceTimeout(
      drained.then(() => 'drained' as const),
      graceMs,
    );
    if (outcome === 'timeout') {
      this.options.logger.warn(
        { inFlight: this.inFlight.size, graceMs },
        'grace period over, cancelling in-flight calls',
      );
      for (const controller of this.inFlight)
        controller.abort(new ServiceError(status.UNAVAILABLE, 'server shutting down'));
    }
    // Responses may still be on their way out: let clients close their connections (they were
    // sent GOAWAY) for what is left of the grace period, then close whatever remains.
    if ((await raceTimeout(tryShutdown, Math.max(1_000, deadline - Date.now()))) === 'timeout')
      this.server.forceShutdown();
    await tryShutdown;
    // Health last, so probes see NOT_SERVING throughout the drain; its calls are short.
    this.#healthServer?.forceShutdown();
    return { drained: outcome === 'drained' };
  }

  /** Wraps a unary handler in the interceptors. */
  unary<Req, Res>(method: string, handler: UnaryHandler<Req, Res>): handleUnaryCall<Req, Res> {
    return (call: ServerUnaryCall<Req, Res>, callback) => {
      void this.run(method, call, (ctx) => handler(call.request, ctx)).then(
        (response) => callback(null, response),
        (error: unknown) => callback(toStatus(error)),
      );
    };
  }

  /** Wraps a server-streaming handler in the interceptors. */
  serverStream<Req, Res>(
    method: string,
    handler: ServerStreamHandler<Req, Res>,
  ): handleServerStreamingCall<Req, Res> {
    return (call: ServerWritableStream<Req, Res>) => {
      // Resolves when the transport took the message, or rejects when the call ended first
      // (a cancelled call never emits 'drain').
      const send = (message: Res) =>
        new Promise<void>((resolve, reject) => {
          const ok = call.write(message, (error: Error | null | undefined) =>
            error ? reject(error) : undefined,
          );
          if (ok) return resolve();
          const settle = (error?: Error) => {
            call.off('drain', onDrain);
            call.off('close', onClose);
            if (error) reject(error);
            else resolve();
          };
          const onDrain = () => settle();
          const onClose = () => settle(new ServiceError(status.CANCELLED, 'the call ended'));
          call.once('drain', onDrain);
          call.once('close', onClose);
        });
      void this.run(method, call, (ctx) => handler(call.request, ctx, send)).then(
        () => call.end(),
        (error: unknown) => {
          const { code, details, metadata } = toStatus(error);
          call.emit('error', { code, details, metadata: metadata ?? new Metadata() });
        },
      );
    };
  }

  /** Whether the call carries the token, compared in constant time. */
  #tokenOk(metadata: Metadata): boolean {
    const given = metadata.get('authorization')[0];
    if (typeof given !== 'string') return false;
    const digest = (s: string) => createHash('sha256').update(s).digest();
    return timingSafeEqual(digest(given), digest(`Bearer ${this.options.token!}`));
  }

  private async run<T>(
    method: string,
    call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>,
    body: (ctx: HandlerContext) => Promise<T>,
  ): Promise<T> {
    if (this.options.token !== undefined && !this.#tokenOk(call.metadata)) {
      throw new ServiceError(
        status.UNAUTHENTICATED,
        'this service takes calls with the internal token only (LOUPE_GRPC_TOKEN)',
        'unauthenticated',
      );
    }
    const started = process.hrtime.bigint();
    const requestId = String(call.metadata.get('x-request-id')[0] ?? randomUUID());
    const parent = extractTraceContext(call.metadata);
    const span = this.options.tracer.startSpan(
      method,
      {
        kind: SpanKind.SERVER,
        attributes: { 'rpc.system': 'grpc', 'rpc.method': method, 'loupe.request_id': requestId },
      },
      parent,
    );
    const spanContext = trace.setSpan(parent, span);
    const logger = this.options.logger.child({
      method,
      requestId,
      traceId: span.spanContext().traceId,
    });
    const controller = new AbortController();
    this.inFlight.add(controller);
    logger.debug('call started');
    this.metrics.inFlight.inc({ method });

    const onCancelled = () =>
      controller.abort(new ServiceError(status.CANCELLED, 'call cancelled by the caller'));
    call.on('cancelled', onCancelled);
    const callerDeadline = call.getDeadline();
    let deadline =
      callerDeadline instanceof Date
        ? callerDeadline.getTime()
        : Number.isFinite(callerDeadline)
          ? Number(callerDeadline)
          : undefined;
    if (deadline === undefined && this.options.defaultDeadlineMs)
      deadline = Date.now() + this.options.defaultDeadlineMs;
    let deadlineTimer: NodeJS.Timeout | undefined;
    if (deadline !== undefined) {
      const abortAtDeadline = () =>
        controller.abort(
          new ServiceError(status.DEADLINE_EXCEEDED, 'deadline exceeded before the work finished'),
        );
      const remaining = deadline - Date.now();
      if (remaining <= 0) abortAtDeadline();
      else deadlineTimer = setTimeout(abortAtDeadline, remaining);
    }

    let code: status = status.OK;
    try {
      if (this.shuttingDown) throw new ServiceError(status.UNAVAILABLE, 'server is shutting down');
      const request: unknown = call.request;
      if (request instanceof UndecodableRequest) throw undecodable(request.message);
      controller.signal.throwIfAborted();
      const ctx: HandlerContext = {
        signal: controller.signal,
        deadline,
        logger,
        requestId,
        metadata: call.metadata,
      };
      const result = await context.with(spanContext, () => body(ctx));
      controller.signal.throwIfAborted();
      return result;
    } catch (error) {
      const mapped = toStatus(error);
      code = mapped.code;
      span.setStatus({ code: SpanStatusCode.ERROR, message: mapped.details });
      if (error instanceof ServiceError) {
        logger.info(
          { code: status[code], reason: error.reason, err: error.message },
          'call failed',
        );
      } else {
        logger.error({ err: error }, 'unexpected error in handler');
        span.recordException(error as Error);
      }
      throw error;
    } finally {
      clearTimeout(deadlineTimer);
      call.removeListener('cancelled', onCancelled);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      this.metrics.handled.inc({ method, code: status[code] });
      this.metrics.duration.observe({ method }, seconds);
      this.metrics.inFlight.dec({ method });
      span.setAttribute('rpc.grpc.status_code', code);
      span.end();
      // After the response has been handed to the transport (the caller's .then runs first).
      setImmediate(() => {
        this.inFlight.delete(controller);
        if (this.inFlight.size === 0) this.drained?.();
      });
    }
  }
}

/** INVALID_ARGUMENT for a request the generated decoder refused, naming why. */
function undecodable(message: string): ServiceError {
  // ts-proto decodes 64-bit integers into JS numbers and throws on those past 2^53 − 1.
  if (/MAX_SAFE_INTEGER|MIN_SAFE_INTEGER/.test(message)) {
    return new ServiceError(
      status.INVALID_ARGUMENT,
      `the request holds a 64-bit integer outside [-(2^53 - 1), 2^53 - 1], the range this service takes (${message})`,
      'integer_out_of_range',
    );
  }
  return new ServiceError(
    status.INVALID_ARGUMENT,
    `the request is not a valid protobuf message for this method (${message.slice(0, 200)})`,
    'bad_request',
  );
}

/** The grpc-js internals the receive limits use (grpc-js 1.14 BaseServerInterceptingCall). */
interface BaseCallInternals {
  decoder?: { write?: (data: Buffer) => Buffer[] };
  sendStatus(status: { code: status; details: string; metadata: Metadata }): void;
}

/** The innermost call of an interceptor chain: grpc-js's own, which owns the stream decoder. */
function baseCall(call: ServerInterceptingCallInterface): BaseCallInternals | undefined {
  let current: unknown = call;
  for (let depth = 0; depth < 16 && current !== null && typeof current === 'object'; depth++) {
    if ('decoder' in current) return current as BaseCallInternals;
    current = (current as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

function bind(
  server: Server,
  host: string,
  port: number,
  credentials: ServerCredentials,
): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(
      `${host.includes(':') ? `[${host}]` : host}:${port}`,
      credentials,
      (error, bound) => (error ? reject(error) : resolve(bound)),
    );
  });
}

async function raceTimeout<T>(promise: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>(
    (resolve) => (timer = setTimeout(() => resolve('timeout'), ms)),
  );
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
