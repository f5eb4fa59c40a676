// Where a stage's endpoints come from, and keeping the list current:
//   "10.0.0.5:50052,10.0.0.6:50052"   a static list
//   "dns:encoder.loupe.svc:50052"       every address of a name (a headless Service), re-resolved
//   "k8s:loupe/encoder:50052"           the ready endpoints of Service `encoder` in namespace
//                                       `loupe`, from its EndpointSlices, watched (the port may
//                                       be a number or a port name)
import { lookup } from 'node:dns/promises';
import {
  DiscoveryV1Api,
  KubeConfig,
  makeInformer,
  type V1EndpointSlice,
} from '@kubernetes/client-node';
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

  // An informer: list the slices, then watch from that list's version; after an error it
  // starts over with a fresh list, so no change is missed across reconnects.
  const config = kubeConfig ?? defaultKubeConfig();
  const api = config.makeApiClient(DiscoveryV1Api);
  const labelSelector = `kubernetes.io/service-name=${source.service}`;
  const path = `/apis/discovery.k8s.io/v1/namespaces/${source.namespace}/endpointslices`;
  const informer = makeInformer<V1EndpointSlice>(
    config,
    path,
    () => api.listNamespacedEndpointSlice({ namespace: source.namespace, labelSelector }),
    labelSelector,
  );
  let stopped = false;
  let last = '';
  const publish = () => {
    const addresses = [
      ...new Set(informer.list().flatMap((s) => sliceAddresses(s as EndpointSlice, source.port))),
    ].sort();
    if (addresses.join() === last) return;
    last = addresses.join();
    logger.info(
      { event: 'endpoints', service: source.service, addresses },
      `${source.service}: ${addresses.length} endpoints`,
    );
    onChange(addresses);
  };
  for (const verb of ['add', 'update', 'delete'] as const) informer.on(verb, publish);
  let retrying = false;
  const restart = (error: unknown) => {
    if (stopped || retrying) return;
    retrying = true;
    logger.warn(
      { err: error, service: source.service },
      'EndpointSlice list/watch failed; listing again',
    );
    setTimeout(() => {
      retrying = false;
      if (!stopped) informer.start().catch(restart);
    }, 1000).unref();
  };
  informer.on('error', restart);
  informer.start().catch(restart);
  return {
    stop: () => {
      stopped = true;
      void informer.stop();
    },
  };
}

function defaultKubeConfig(): KubeConfig {
  const config = new KubeConfig();
  config.loadFromDefault();
  return config;
}
