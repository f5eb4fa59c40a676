// Starts a service the same way every time: gRPC server with health (and reflection when
// enabled), metrics HTTP server, a readiness log line, and graceful shutdown on SIGTERM/SIGINT.
import type { Tracer } from '@opentelemetry/api';
import { ConfigError } from './config.js';
import { GrpcServer } from './grpc-server.js';
import type { CertificateFiles } from './grpc-tls.js';
import type { Logger } from './logger.js';
import { startMetricsServer, type Registry } from './metrics.js';
import { onShutdownSignal } from './shutdown.js';
import type { Tracing } from './tracing.js';

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
