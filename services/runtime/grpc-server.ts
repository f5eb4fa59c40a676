// gRPC server bootstrap: message size and stream limits, health, reflection (when enabled),
// TLS with client certificates and a plaintext health port (when configured), and the
// interceptors every handler runs inside — request id, tracing, deadline, cancellation, error
// mapping, metrics and in-flight tracking for a graceful drain.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import {
  Metadata,
  Server,
  ServerCredentials,
  status,
  type handleServerStreamingCall,
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
import type { CallContext } from './call-context.js';
import { ServiceError, toStatus } from './errors.js';
import { serverTlsCredentials, type CertificateFiles } from './grpc-tls.js';
import { HealthRegistry, ServingStatus } from './health.js';
import type { Logger } from './logger.js';
import { createRpcMetrics, type Registry, type RpcMetrics } from './metrics.js';
import { protoRoot } from './paths.js';
import { extractTraceContext } from './tracing.js';

export type UnaryHandler<Req, Res> = (request: Req, ctx: CallContext) => Promise<Res>;
export type ServerStreamHandler<Req, Res> = (
  request: Req,
  ctx: CallContext,
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

  constructor(private readonly options: GrpcServerOptions) {
    this.server = new Server({
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

  /** Registers a service; it reports NOT_SERVING until `setServing()`. */
  addService(
    name: string,
    definition: ServiceDefinition,
    implementation: UntypedServiceImplementation,
  ): void {
    this.server.addService(definition, implementation);
    this.health.set(name, ServingStatus.NOT_SERVING);
  }

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
      this.#healthServer = new Server();
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
    body: (ctx: CallContext) => Promise<T>,
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
      controller.signal.throwIfAborted();
      const ctx: CallContext = {
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
