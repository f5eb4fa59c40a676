// Starts a service the same way every time. runService is every service's entry point (each
// main.ts): configuration, logger, tracing, the service's own start (its model, its handlers),
// then its server — gRPC with health (and reflection when enabled) for a stage, HTTP for the
// gateway —, a metrics HTTP server, a readiness log line, and graceful shutdown on
// SIGTERM/SIGINT that drains the calls in flight (docs/architecture.md, "Shutdown"); a model
// thread that dies makes the process exit to be restarted ("A model thread that dies").
import type { Tracer } from '@opentelemetry/api';
import { serve } from '@hono/node-server';
import { ConfigError, type CommonConfig } from './config.js';
import { internalToken } from './grpc-client.js';
import { GrpcServer } from './grpc-server.js';
import { stageTransport, type CertificateFiles } from './grpc-tls.js';
import { createLogger, type Logger } from './logger.js';
import { startMetricsServer, type Registry } from './metrics.js';
import { onShutdownSignal } from './shutdown.js';
import { initTracing, type Tracing } from './tracing.js';
import { exitForDeadWorker, type WorkerDeath } from './worker.js';

/** A stage's configuration: the common settings, and where it listens. */
export type StageConfig = CommonConfig & {
  readonly host: string;
  readonly port: number;
  /** The metrics server's port, on `host`. */
  readonly metricsPort: number;
  /** Applied to calls that carry no deadline, ms. */
  readonly defaultDeadlineMs: number;
};

/** An HTTP service's configuration (the gateway's): the common settings, and where it listens. */
export type HttpServiceConfig = CommonConfig & {
  readonly host: string;
  readonly port: number;
  readonly metricsHost: string;
  readonly metricsPort: number;
};

/** What a service's `start` is given. */
export interface ServiceContext<C> {
  config: C;
  logger: Logger;
  tracer: Tracer;
  /**
   * The `onDeath` of a model thread the service cannot serve without (exitForDeadWorker in
   * worker.ts): health NOT_SERVING, an error line, a graceful stop once the service has
   * started, and exit code 70. `stallSetting` names the variable whose limit declares the
   * thread stuck, for the log line.
   */
  exitOnDeath(
    thread: { readonly ended: Promise<void> },
    stallSetting: string,
  ): (death: WorkerDeath) => void;
}

/** What a stage's `start` hands back: its metrics, its handlers, what to release at the end. */
export interface GrpcService {
  registry: Registry;
  /** Registers the service's handlers. */
  register(server: GrpcServer): void;
  /** Releases the service's own resources after the gRPC server has drained. */
  close?(): Promise<void>;
}

/** What an HTTP service's `start` hands back (the gateway's app). */
export interface HttpService {
  registry: Registry;
  fetch: Parameters<typeof serve>[0]['fetch'];
  /** Requests in flight: a shutdown waits for them, within LOUPE_SHUTDOWN_GRACE_MS. */
  inFlight(): number;
  /** The first step of a shutdown: stop admitting work (readiness answers 503). */
  drain(): void;
  /** Releases the service's own resources after the requests in flight have drained. */
  close?(): Promise<void>;
  /** For the ready line: the route clients call, and the model it serves. */
  ready: { path: string; modelId: string };
}

interface Definition<C, S> {
  /** Names the service in logs, on spans, in metrics (`service`) and on stderr (`loupe <name>:`). */
  name: string;
  /** Reads the configuration; a ConfigError stops the process with exit code 2. */
  loadConfig(): C;
  /** Everything of the service's own: its model, its metrics, its handlers. */
  start(context: ServiceContext<C>): Promise<S>;
}

export interface GrpcServiceDefinition<C extends StageConfig> extends Definition<C, GrpcService> {
  serves: 'grpc';
  /** The proto files reflection describes (LOUPE_GRPC_REFLECTION). */
  reflectionProtos: string[];
}

export interface HttpServiceDefinition<C extends HttpServiceConfig> extends Definition<
  C,
  HttpService
> {
  serves: 'http';
}

/**
 * Runs a service as a process: an invalid configuration stops it with exit code 2, any other
 * start failure with 1 (runMain); a signal drains it and exits 0; a model thread's death
 * exits 70 (`exitOnDeath`).
 */
export function runService<C extends StageConfig>(definition: GrpcServiceDefinition<C>): void;
export function runService<C extends HttpServiceConfig>(definition: HttpServiceDefinition<C>): void;
export function runService(
  definition: GrpcServiceDefinition<StageConfig> | HttpServiceDefinition<HttpServiceConfig>,
): void {
  runMain(definition.name, () =>
    definition.serves === 'grpc' ? runGrpcService(definition) : runHttpService(definition),
  );
}

/** What both kinds of service do first; `running` is filled in once the service has started. */
function begin<C extends CommonConfig>(definition: Definition<C, unknown>) {
  const { name } = definition;
  const config = definition.loadConfig();
  const logger = createLogger({ service: name, level: config.logLevel });
  const tracing = initTracing({
    serviceName: config.tracing.serviceName ?? `loupe-${name}`,
    otlpEndpoint: config.tracing.otlpEndpoint,
  });
  const running: { server?: GrpcServer; stop?: () => Promise<void> } = {};
  const context: ServiceContext<C> = {
    config,
    logger,
    tracer: tracing.tracer,
    exitOnDeath: (thread, stallSetting) => (death) =>
      void exitForDeadWorker(death, {
        logger,
        server: running.server,
        stop: running.stop,
        threadEnded: thread.ended,
        stallSetting,
      }),
  };
  return { config, logger, tracing, running, context };
}

async function runGrpcService<C extends StageConfig>(
  definition: GrpcServiceDefinition<C>,
): Promise<void> {
  const { config, logger, tracing, running, context } = begin(definition);
  // TLS files and the health port are checked now, before a slow start fails late on them.
  const transport = stageTransport(config.grpc, logger);
  const service = await definition.start(context);
  const started = await startService({
    name: definition.name,
    logger,
    tracing,
    registry: service.registry,
    grpc: {
      host: config.host,
      port: config.port,
      maxMessageBytes: config.grpc.maxMessageBytes,
      reflection: config.grpc.reflection,
      maxConcurrentStreams: config.grpc.maxConcurrentStreams,
      token: internalToken(config.grpc),
      ...transport,
      reflectionProtos: definition.reflectionProtos,
      defaultDeadlineMs: config.defaultDeadlineMs,
    },
    metrics: { host: config.host, port: config.metricsPort },
    shutdownGraceMs: config.shutdownGraceMs,
    register: (server) => {
      running.server = server;
      service.register(server);
    },
    close: async () => {
      await service.close?.();
    },
  });
  running.stop = started.stop;
}

async function runHttpService<C extends HttpServiceConfig>(
  definition: HttpServiceDefinition<C>,
): Promise<void> {
  const { name } = definition;
  const { config, logger, tracing, running, context } = begin(definition);
  const service = await definition.start(context);
  const server = serve({ fetch: service.fetch, hostname: config.host, port: config.port });
  await new Promise<void>((resolveListen, reject) => {
    server.once('listening', () => resolveListen());
    server.once('error', reject);
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const metrics = await startMetricsServer({
    registry: service.registry,
    host: config.metricsHost,
    port: config.metricsPort,
  });
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      // Stop accepting, let requests in flight finish within the grace period, then close.
      service.drain();
      server.close();
      const until = Date.now() + config.shutdownGraceMs;
      while (service.inFlight() > 0 && Date.now() < until)
        await new Promise((r) => setTimeout(r, 50));
      const drained = service.inFlight() === 0;
      logger.info({ event: 'stopped', drained }, `${name} stopped`);
      await service.close?.();
      await metrics.close();
      await tracing.shutdown();
    })());
  running.stop = stop;
  // Before the ready line: whoever reads it may signal at once (see startService).
  onShutdownSignal(logger, stop);
  const { path, modelId } = service.ready;
  logger.info(
    {
      event: 'ready',
      httpHost: config.host,
      httpPort: port,
      metricsHost: config.metricsHost,
      metricsPort: metrics.port,
      modelId,
    },
    `${name} ready: http://${config.host}:${port}${path} (model ${modelId}), metrics on http://${config.metricsHost}:${metrics.port}/metrics`,
  );
}

export interface ServiceOptions {
  name: string;
  logger: Logger;
  tracing: Tracing;
  registry: Registry;
  grpc: {
    host: string;
    port: number;
    maxMessageBytes: number;
    reflectionProtos: string[];
    defaultDeadlineMs?: number;
    /** Serve gRPC reflection (LOUPE_GRPC_REFLECTION); default false. */
    reflection?: boolean;
    /** Streams one connection may have open at once (LOUPE_GRPC_MAX_CONCURRENT_STREAMS). */
    maxConcurrentStreams?: number;
    /** The internal token callers must send (LOUPE_GRPC_TOKEN); unset: no check. */
    token?: string;
    /** mTLS with these certificates (LOUPE_GRPC_TLS_*); unset: plaintext. */
    tls?: CertificateFiles;
    /** A plaintext port serving health alone (LOUPE_GRPC_HEALTH_PORT), for probes. */
    healthPort?: number;
  };
  metrics: { host: string; port: number };
  shutdownGraceMs: number;
  /** Registers the service's handlers. */
  register(server: GrpcServer, tracer: Tracer): void;
  /** Releases the service's own resources after the gRPC server has drained. */
  close?(): Promise<void>;
  /** Install SIGTERM/SIGINT handlers (true for a process; tests that embed a service pass false). */
  handleSignals?: boolean;
}

export interface RunningService {
  grpcPort: number;
  metricsPort: number;
  server: GrpcServer;
  stop(): Promise<void>;
}

/**
 * A stage's servers, started: the gRPC server with the handlers `register` adds, the metrics
 * server, the shutdown on SIGTERM/SIGINT, and the ready line. runService calls it for a stage.
 */
export async function startService(options: ServiceOptions): Promise<RunningService> {
  const { name, logger, tracing, registry } = options;
  const server = new GrpcServer({
    logger,
    tracer: tracing.tracer,
    registry,
    maxMessageBytes: options.grpc.maxMessageBytes,
    reflectionProtos: options.grpc.reflectionProtos,
    defaultDeadlineMs: options.grpc.defaultDeadlineMs,
    reflection: options.grpc.reflection,
    maxConcurrentStreams: options.grpc.maxConcurrentStreams,
    ...(options.grpc.token === undefined ? {} : { token: options.grpc.token }),
    ...(options.grpc.tls === undefined ? {} : { tls: options.grpc.tls }),
    ...(options.grpc.healthPort === undefined ? {} : { healthPort: options.grpc.healthPort }),
  });
  options.register(server, tracing.tracer);
  let alive = true;
  const metrics = await startMetricsServer({
    registry,
    host: options.metrics.host,
    port: options.metrics.port,
    isAlive: () => alive,
  });
  const grpcPort = await server.listen(options.grpc.host, options.grpc.port);
  server.setServing();
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      const { drained } = await server.shutdown(options.shutdownGraceMs);
      logger.info({ event: 'stopped', drained }, `${name} stopped`);
      await options.close?.();
      alive = false;
      await metrics.close();
      await tracing.shutdown();
    })());
  // Before the ready line: whoever reads it (a test, a supervisor) may signal at once, and a
  // SIGTERM that arrives before the handler exists kills the process without draining.
  if (options.handleSignals ?? true) onShutdownSignal(logger, stop);
  const grpcTls = options.grpc.tls !== undefined;
  const healthPort = server.healthPort;
  logger.info(
    {
      event: 'ready',
      grpcHost: options.grpc.host,
      grpcPort,
      grpcTls,
      ...(healthPort === undefined ? {} : { grpcHealthPort: healthPort }),
      metricsHost: options.metrics.host,
      metricsPort: metrics.port,
    },
    `${name} ready: gRPC${grpcTls ? ' (TLS)' : ''} on ${options.grpc.host}:${grpcPort}${healthPort === undefined ? '' : `, plaintext health on ${options.grpc.host}:${healthPort}`}, metrics on http://${options.metrics.host}:${metrics.port}/metrics`,
  );

  return { grpcPort, metricsPort: metrics.port, server, stop };
}

/**
 * Runs a service's entry point: an invalid configuration (ConfigError) stops the process
 * with exit code 2 and the message naming the variable; any other start failure with 1.
 */
export function runMain(name: string, main: () => Promise<void>): void {
  main().catch((error: unknown) => {
    if (error instanceof ConfigError) {
      process.stderr.write(`loupe ${name}: ${error.message}\n`);
      process.exit(2);
    }
    process.stderr.write(
      `loupe ${name}: failed to start: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exit(1);
  });
}
