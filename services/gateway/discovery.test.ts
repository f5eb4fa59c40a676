// Endpoint discovery. The Kubernetes case runs against a stand-in for the Kubernetes API
// server (a test double: no cluster runs here) on loopback that streams EndpointSlice watch
// events, so the real @kubernetes/client-node watch code is exercised.
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../runtime/index.js';
import { parseEndpoints, sliceAddresses, watchEndpoints } from './discovery.js';

const logger = createLogger({ service: 'test', level: 'silent' });
const slice = (name: string, ready: string[], notReady: string[] = []) => ({
  apiVersion: 'discovery.k8s.io/v1',
  kind: 'EndpointSlice',
  metadata: { name, labels: { 'kubernetes.io/service-name': 'encoder' } },
  ports: [{ name: 'grpc', port: 50052 }],
  endpoints: [
    ...ready.map((a) => ({ addresses: [a], conditions: { ready: true } })),
    ...notReady.map((a) => ({ addresses: [a], conditions: { ready: false } })),
  ],
});

describe('parseEndpoints', () => {
  it('reads static lists, dns: names and k8s: services, and refuses the rest', () => {
    expect(parseEndpoints(['10.0.0.1:50051', 'pre-1:50051'])).toEqual({
      kind: 'static',
      addresses: ['10.0.0.1:50051', 'pre-1:50051'],
    });
    expect(parseEndpoints(['dns:encoder.loupe.svc:50052'])).toEqual({
      kind: 'dns',
      host: 'encoder.loupe.svc',
      port: 50052,
    });
    expect(parseEndpoints(['k8s:loupe/encoder:grpc'])).toEqual({
      kind: 'kubernetes',
      namespace: 'loupe',
      service: 'encoder',
      port: 'grpc',
    });
    expect(() => parseEndpoints(['encoder'])).toThrow('must look like HOST:PORT');
    expect(() => parseEndpoints(['k8s:encoder'])).toThrow('k8s:NAMESPACE/SERVICE:PORT');
  });

  it('takes the ready addresses of a slice, with a named or numbered port', () => {
    const s = slice('a', ['10.1.0.1', 'fd00::1'], ['10.1.0.9']);
    expect(sliceAddresses(s, 'grpc')).toEqual(['10.1.0.1:50052', '[fd00::1]:50052']);
    expect(sliceAddresses(s, '6000')).toEqual(['10.1.0.1:6000', '[fd00::1]:6000']);
    expect(sliceAddresses(s, 'http')).toEqual([]);
  });
});

describe('watchEndpoints on a DNS name', () => {
  it('lists every address of the name with the port', async () => {
    const addresses = await new Promise<string[]>((resolve) => {
      const watcher = watchEndpoints(
        { kind: 'dns', host: 'localhost', port: 50052 },
        (a) => {
          watcher.stop();
          resolve(a);
        },
        { logger },
      );
    });
    expect(addresses.length).toBeGreaterThan(0);
    for (const a of addresses) expect(['127.0.0.1:50052', '[::1]:50052']).toContain(a);
  });
});

describe('watchEndpoints on Kubernetes EndpointSlices (API server stand-in)', () => {
  it('lists, then follows pods appearing, becoming not ready and disappearing', async () => {
    let stream: ServerResponse | undefined;
    const requests: string[] = [];
    const server = createServer((req, res) => {
      requests.push(req.url!);
      const url = new URL(req.url!, 'http://x');
      res.writeHead(200, { 'content-type': 'application/json' });
      if (url.searchParams.get('watch') === 'true') {
        stream = res; // events are written by the test below
        return;
      }
      res.end(
        JSON.stringify({
          apiVersion: 'discovery.k8s.io/v1',
          kind: 'EndpointSliceList',
          metadata: { resourceVersion: '10' },
          items: [slice('encoder-a', ['10.1.0.1'], ['10.1.0.3'])],
        }),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const config = new KubeConfig();
    config.loadFromOptions({
      clusters: [
        {
          name: 'test',
          server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
          skipTLSVerify: true,
        },
      ],
      users: [{ name: 'test', token: 'token' }],
      contexts: [{ name: 'test', cluster: 'test', user: 'test' }],
      currentContext: 'test',
    });
    const seen: string[][] = [];
    let notify: (() => void) | undefined;
    let changed = new Promise<void>((r) => (notify = r));
    const watcher = watchEndpoints(
      { kind: 'kubernetes', namespace: 'loupe', service: 'encoder', port: 'grpc' },
      (addresses) => {
        seen.push(addresses);
        notify?.();
      },
      { logger, kubeConfig: config },
    );
    const next = () => (changed = new Promise<void>((r) => (notify = r)));
    try {
      await changed; // the list
      expect(seen).toEqual([['10.1.0.1:50052']]);
      const list = requests.find((r) => !r.includes('watch=true'))!;
      expect(list).toMatch(/^\/apis\/discovery\.k8s\.io\/v1\/namespaces\/loupe\/endpointslices\?/);
      expect(decodeURIComponent(list)).toContain(
        'labelSelector=kubernetes.io/service-name=encoder',
      );
      while (!stream) await new Promise((r) => setTimeout(r, 5));
      const send = (type: string, object: ReturnType<typeof slice>, version: number) =>
        stream!.write(
          JSON.stringify({
            type,
            object: {
              ...object,
              metadata: { ...object.metadata, resourceVersion: String(version) },
            },
          }) + '\n',
        );
      void next();
      send('MODIFIED', slice('encoder-a', ['10.1.0.1', '10.1.0.2']), 11); // a pod appears
      await changed;
      void next();
      send('ADDED', slice('encoder-b', ['10.1.0.4']), 12); // another slice
      await changed;
      void next();
      send('MODIFIED', slice('encoder-a', ['10.1.0.2'], ['10.1.0.1']), 13); // a pod is not ready
      await changed;
      void next();
      send('DELETED', slice('encoder-b', []), 14); // its pods are gone
      await changed;
      expect(seen).toEqual([
        ['10.1.0.1:50052'],
        ['10.1.0.1:50052', '10.1.0.2:50052'],
        ['10.1.0.1:50052', '10.1.0.2:50052', '10.1.0.4:50052'],
        ['10.1.0.2:50052', '10.1.0.4:50052'],
        ['10.1.0.2:50052'],
      ]);
    } finally {
      watcher.stop();
      stream?.end();
      server.closeAllConnections();
      server.close();
    }
  });
});
