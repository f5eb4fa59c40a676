// Prometheus metrics: one registry per service, served on its own HTTP port at /metrics.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export { Counter, Gauge, Histogram, Registry };

/**
 * A registry whose every series carries `service` and, for the stages that run a model (the
 * gateway, encoder and decoder), `model_name`: dashboards and alerts tell models apart when
 * several releases share one Prometheus. Prometheus's Kubernetes discovery renames an
 * application's `service` label to `exported_service` (docs/operations.md). The process and
 * Node.js metrics prom-client collects are prefixed `loupe_`: `loupe_process_cpu_seconds_total`,
 * `loupe_nodejs_eventloop_lag_seconds`, ...
 */
export function createRegistry(service: string, modelName?: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels(
    modelName === undefined ? { service } : { service, model_name: modelName },
  );
  collectDefaultMetrics({ register: registry, prefix: 'loupe_' });
  return registry;
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

export interface MetricsServerOptions {
  registry: Registry;
  host: string;
  port: number;
  /** Answers GET /healthz: true while the process should be considered alive. */
  isAlive?: () => boolean;
}

/** Serves GET /metrics (Prometheus text format) and GET /healthz. */
export async function startMetricsServer({
  registry,
  host,
  port,
  isAlive = () => true,
}: MetricsServerOptions): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/metrics') {
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(text);
        },
        (error: unknown) => {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end(`metrics collection failed: ${String(error)}\n`);
        },
      );
      return;
    }
    if (req.method === 'GET' && path === '/healthz') {
      const alive = isAlive();
      res.writeHead(alive ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(alive ? 'ok\n' : 'not alive\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Metrics every gRPC server records for each call. */
export interface RpcMetrics {
  handled: Counter<'method' | 'code'>;
  duration: Histogram<'method'>;
  inFlight: Gauge<'method'>;
}

export function createRpcMetrics(registry: Registry): RpcMetrics {
  return {
    handled: new Counter({
      name: 'loupe_grpc_server_handled_total',
      help: 'gRPC calls completed, by method and status code.',
      labelNames: ['method', 'code'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: 'loupe_grpc_server_handling_seconds',
      help: 'gRPC call duration, seconds.',
      labelNames: ['method'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    inFlight: new Gauge({
      name: 'loupe_grpc_server_in_flight',
      help: 'gRPC calls being handled now.',
      labelNames: ['method'],
      registers: [registry],
    }),
  };
}
