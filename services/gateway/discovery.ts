// Where a stage's endpoints come from, and keeping the list current:
//   "10.0.0.5:50052,10.0.0.6:50052"   a static list
//   "dns:encoder.loupe.svc:50052"       every address of a name (a headless Service), re-resolved
//   "k8s:loupe/encoder:50052"           the ready endpoints of Service `encoder` in namespace
//                                       `loupe`, from its EndpointSlices, watched (the port may
//                                       be a number or a port name)
import { lookup } from 'node:dns/promises';
import { KubeConfig, Watch } from '@kubernetes/client-node';
import type { Logger } from '../runtime/index.js';

export type EndpointSource =
  | { kind: 'static'; addresses: string[] }
  | { kind: 'dns'; host: string; port: number }
  | { kind: 'kubernetes'; namespace: string; service: string; port: string };

export function parseEndpoints(spec: readonly string[]): EndpointSource {
  const [first] = spec;
  if (spec.length === 1 && first!.startsWith('dns:')) {
    const m = /^dns:([^:]+):(\d+)$/.exec(first!);
    if (!m) throw new Error(`"${first}" must look like dns:HOST:PORT`);
    return { kind: 'dns', host: m[1]!, port: Number(m[2]) };
  }
  if (spec.length === 1 && first!.startsWith('k8s:')) {
    const m = /^k8s:([a-z0-9-]+)\/([a-z0-9-]+):([a-z0-9-]+)$/.exec(first!);
    if (!m) throw new Error(`"${first}" must look like k8s:NAMESPACE/SERVICE:PORT`);
    return { kind: 'kubernetes', namespace: m[1]!, service: m[2]!, port: m[3]! };
  }
  for (const a of spec) {
    if (!/^[^\s]+:\d+$/.test(a)) throw new Error(`endpoint "${a}" must look like HOST:PORT`);
  }
  return { kind: 'static', addresses: [...spec] };
}

const hostPort = (ip: string, port: number | string) =>
  ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;

interface EndpointSlice {
  metadata?: { name?: string };
  ports?: Array<{ name?: string; port?: number }>;
  endpoints?: Array<{ addresses?: string[]; conditions?: { ready?: boolean } }>;
}

/** Ready host:port addresses of one EndpointSlice. */
export function sliceAddresses(slice: EndpointSlice, port: string): string[] {
  const number = /^\d+$/.test(port)
    ? Number(port)
    : slice.ports?.find((p) => p.name === port)?.port;
  if (number === undefined) return [];
  return (slice.endpoints ?? [])
    .filter((e) => e.conditions?.ready !== false)
    .flatMap((e) => (e.addresses ?? []).map((a) => hostPort(a, number)));
}

export interface Watcher {
  stop(): void;
}

/**
 * Calls `onChange` with the current addresses now (static) or as they become known and
 * whenever they change. `kubeConfig` defaults to the in-cluster (or ~/.kube) configuration.
 */
export function watchEndpoints(
  source: EndpointSource,
  onChange: (addresses: string[]) => void,
  {
    logger,
    dnsIntervalMs = 5000,
    kubeConfig,
  }: { logger: Logger; dnsIntervalMs?: number; kubeConfig?: KubeConfig },
): Watcher {
  if (source.kind === 'static') {
    onChange(source.addresses);
    return { stop: () => {} };
  }
  if (source.kind === 'dns') {
    let last = '';
    const refresh = async () => {
      try {
        const found = await lookup(source.host, { all: true });
        const addresses = [...new Set(found.map((a) => hostPort(a.address, source.port)))].sort();
        if (addresses.join() !== last) {
          last = addresses.join();
          logger.info(
            { event: 'endpoints', host: source.host, addresses },
            `${source.host}: ${addresses.length} endpoints`,
          );
          onChange(addresses);
        }
      } catch (error) {
        logger.warn(
          { err: error, host: source.host },
          'endpoint lookup failed; keeping the last list',
        );
      }
    };
    void refresh();
    const timer = setInterval(() => void refresh(), dnsIntervalMs);
    timer.unref();
    return { stop: () => clearInterval(timer) };
  }

  const config = kubeConfig ?? defaultKubeConfig();
  const slices = new Map<string, string[]>();
  let stopped = false;
  let abort: AbortController | undefined;
  const publish = () => onChange([...new Set([...slices.values()].flat())].sort());
  const path = `/apis/discovery.k8s.io/v1/namespaces/${source.namespace}/endpointslices`;
  const start = async () => {
    if (stopped) return;
    try {
      abort = await new Watch(config).watch(
        path,
        { labelSelector: `kubernetes.io/service-name=${source.service}` },
        (phase, slice: EndpointSlice) => {
          const name = slice.metadata?.name ?? '';
          if (phase === 'DELETED') slices.delete(name);
          else if (phase === 'ADDED' || phase === 'MODIFIED')
            slices.set(name, sliceAddresses(slice, source.port));
          else return;
          publish();
        },
        (error: unknown) => {
          if (stopped) return;
          if (error)
            logger.warn(
              { err: error, service: source.service },
              'EndpointSlice watch ended; restarting',
            );
          setTimeout(() => void start(), 1000).unref();
        },
      );
    } catch (error) {
      logger.warn({ err: error, service: source.service }, 'cannot watch EndpointSlices; retrying');
      setTimeout(() => void start(), 2000).unref();
    }
  };
  void start();
  return {
    stop: () => {
      stopped = true;
      abort?.abort();
    },
  };
}

function defaultKubeConfig(): KubeConfig {
  const config = new KubeConfig();
  config.loadFromDefault();
  return config;
}
