// The image fetcher against loopback only: injected resolvers for names that would resolve
// publicly, a c-ares resolver pointed at a loopback UDP socket that never answers, and a
// loopback HTTP server for redirects. A name that resolves to a refused address is refused
// before any connection is attempted.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AllowList } from './address-policy.js';
import {
  ImageSourceError,
  loadImage,
  systemResolver,
  type ImageSourceOptions,
  type ResolveOptions,
} from './image-source.js';

const options = (
  resolve: ImageSourceOptions['resolve'],
  allow: string[] = [],
  overrides: Partial<ImageSourceOptions> = {},
): ImageSourceOptions => ({
  maxBytes: 1 << 20,
  timeoutMs: 2000,
  connectTimeoutMs: 1000,
  maxRedirects: 2,
  allow: new AllowList(allow),
  resolve,
  ...overrides,
});
const never = new AbortController().signal;
const PNG = Buffer.concat([
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
  Buffer.alloc(32, 7),
]);

/** How long `promise` takes to settle, and how. */
async function timed<T>(promise: Promise<T>) {
  const start = performance.now();
  const outcome = await promise.then(
    (value) => ({ value, error: undefined }),
    (error: unknown) => ({ value: undefined, error }),
  );
  return { ...outcome, ms: performance.now() - start };
}

/** A UDP "DNS server" on loopback that counts queries and never answers. */
async function silentDns(): Promise<{ server: string; queries: () => number; close(): void }> {
  const socket: UdpSocket = createSocket('udp4');
  let queries = 0;
  socket.on('message', () => queries++);
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', r));
  return {
    server: `127.0.0.1:${socket.address().port}`,
    queries: () => queries,
    close: () => socket.close(),
  };
}

describe('loadImage with an injected resolver', () => {
  it.each([
    [[{ address: '10.1.2.3', family: 4 }], /resolves to 10\.1\.2\.3, a private address/],
    [[{ address: '169.254.169.254', family: 4 }], /a metadata address/],
    [
      [
        { address: '93.184.216.34', family: 4 },
        { address: '127.0.0.1', family: 4 },
      ],
      /127\.0\.0\.1, a loopback address/,
    ],
    [[{ address: 'fe80::1', family: 6 }], /a link-local address/],
    [[{ address: '2002:a00:1::1', family: 6 }], /a private address \(6to4 for 10\.0\.0\.1\)/],
    [
      [{ address: '2001:0:808:808:0:0:f5ff:fffe', family: 6 }],
      /a private address \(teredo for 10\.0\.0\.1\)/,
    ],
    [
      [{ address: '64:ff9b::a9fe:a9fe', family: 6 }],
      /a metadata address \(nat64 for 169\.254\.169\.254\)/,
    ],
    [[{ address: '::ffff:192.168.0.1', family: 6 }], /\(ipv4-mapped for 192\.168\.0\.1\)/],
    [[{ address: '198.51.100.7', family: 4 }], /a reserved address/],
  ])('refuses a name that resolves to %j, without connecting', async (addresses, message) => {
    // A listener on loopback: had the fetcher connected anywhere here, it would have counted.
    let connections = 0;
    const server = createServer(() => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const asked: string[] = [];
    try {
      await expect(
        loadImage(
          'http://images.example/cat.png?token=secret',
          'image_url',
          options(async (host) => (asked.push(host), addresses)),
          never,
        ),
      ).rejects.toMatchObject({
        reason: 'blocked_address',
        field: 'image_url',
        message: expect.stringMatching(message),
      });
      expect(asked).toEqual(['images.example']);
      expect(connections).toBe(0);
    } finally {
      server.close();
    }
  });

  it('names only the host when the resolver fails', async () => {
    const failing = () =>
      Promise.reject(Object.assign(new Error('queryA ENOTFOUND x'), { code: 'ENOTFOUND' }));
    await expect(
      loadImage('http://images.example/cat.png?token=secret', 'image_url', options(failing), never),
    ).rejects.toMatchObject({
      reason: 'fetch_failed',
      message: '`image_url`: cannot resolve images.example (ENOTFOUND)',
    });
  });

  it('lets an allow-listed host through the policy', async () => {
    // Allowed, so it tries to connect: to a closed port, which fails as a fetch error.
    await expect(
      loadImage(
        'http://images.internal:1/cat.png',
        'image_url',
        options(async () => [{ address: '127.0.0.1', family: 4 }], ['images.internal']),
        never,
      ),
    ).rejects.toMatchObject({ reason: 'fetch_failed' });
  });

  it('gives up on a resolver that never answers at the connect timeout, and aborts it', async () => {
    const seen: ResolveOptions[] = [];
    const { error, ms } = await timed(
      loadImage(
        'http://images.example/cat.png',
        'image_url',
        options((_host, o) => (seen.push(o), new Promise(() => {})), [], {
          connectTimeoutMs: 300,
          timeoutMs: 5000,
        }),
        never,
      ),
    );
    expect(error).toBeInstanceOf(ImageSourceError);
    expect(error).toMatchObject({
      reason: 'timeout',
      message: '`image_url`: no answer resolving images.example within 300 ms',
    });
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(2000);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.timeoutMs).toBe(300);
    expect(seen[0]!.signal.aborted).toBe(true);
  });

  it('bounds the lookup by the whole fetch timeout when that is shorter', async () => {
    const { error, ms } = await timed(
      loadImage(
        'http://images.example/cat.png',
        'image_url',
        options(() => new Promise(() => {}), [], { connectTimeoutMs: 5000, timeoutMs: 200 }),
        never,
      ),
    );
    expect(error).toMatchObject({ reason: 'timeout' });
    expect(ms).toBeLessThan(2000);
  });

  it('stops a pending lookup when the client goes away', async () => {
    const controller = new AbortController();
    const seen: AbortSignal[] = [];
    const gone = new Error('client went away');
    setTimeout(() => controller.abort(gone), 100);
    const { error, ms } = await timed(
      loadImage(
        'http://images.example/cat.png',
        'image_url',
        options((_host, { signal }) => (seen.push(signal), new Promise(() => {})), [], {
          connectTimeoutMs: 5000,
          timeoutMs: 5000,
        }),
        controller.signal,
      ),
    );
    expect(error).toBe(gone);
    expect(ms).toBeLessThan(2000);
    expect(seen[0]!.aborted).toBe(true);
  });
});

describe('systemResolver (c-ares)', () => {
  it('fails within the fetch timeout when the DNS server never answers', async () => {
    const dns = await silentDns();
    try {
      const resolve = systemResolver({ servers: [dns.server], hostsFile: null });
      const { error, ms } = await timed(
        loadImage(
          'http://images.example/cat.png',
          'image_url',
          options(resolve, [], { connectTimeoutMs: 400, timeoutMs: 5000 }),
          never,
        ),
      );
      expect(error).toMatchObject({
        reason: 'timeout',
        message: '`image_url`: no answer resolving images.example within 400 ms',
      });
      expect(ms).toBeLessThan(2500);
      expect(dns.queries()).toBeGreaterThanOrEqual(2); // A and AAAA, in parallel
    } finally {
      dns.close();
    }
  });

  it('cancels its queries when the signal aborts, long before its own timeouts', async () => {
    const dns = await silentDns();
    try {
      const resolve = systemResolver({ servers: [dns.server], hostsFile: null, tries: 4 });
      const controller = new AbortController();
      setTimeout(() => controller.abort(new Error('client went away')), 150);
      // c-ares would wait 10 s / 3 per try before giving up on its own.
      const { error, ms } = await timed(
        resolve('images.example', { signal: controller.signal, timeoutMs: 10_000 }),
      );
      expect(error).toMatchObject({ message: 'client went away' });
      expect(ms).toBeLessThan(1500);
      const asked = dns.queries();
      expect(asked).toBeGreaterThanOrEqual(2);
      await new Promise((r) => setTimeout(r, 200));
      expect(dns.queries()).toBe(asked);
    } finally {
      dns.close();
    }
  });

  it('answers from the hosts file and for localhost without asking DNS', async () => {
    const dns = await silentDns();
    const dir = await mkdtemp(join(tmpdir(), 'loupe-hosts-'));
    try {
      const hostsFile = join(dir, 'hosts');
      await writeFile(
        hostsFile,
        '# comment\n127.0.0.1\tlocalhost\n127.0.0.1 images.test Images.Alias # an alias\n::1 images.test\n',
      );
      const resolve = systemResolver({ servers: [dns.server], hostsFile });
      const o = { signal: never, timeoutMs: 1000 };
      expect(await resolve('images.test', o)).toEqual([
        { address: '127.0.0.1', family: 4 },
        { address: '::1', family: 6 },
      ]);
      expect(await resolve('IMAGES.alias.', o)).toEqual([{ address: '127.0.0.1', family: 4 }]);
      const withoutHosts = systemResolver({ servers: [dns.server], hostsFile: null });
      expect(await withoutHosts('localhost', o)).toEqual([
        { address: '127.0.0.1', family: 4 },
        { address: '::1', family: 6 },
      ]);
      expect(await withoutHosts('cdn.localhost', o)).toHaveLength(2);
      expect(dns.queries()).toBe(0);
    } finally {
      dns.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('fetching from a loopback server', () => {
  let server: HttpServer;
  let base: string;
  let port: number;
  const redirects: Record<string, Record<string, string>> = {
    '/relative': { location: '/cat.png' },
    '/invalid': { location: 'http://[::1/secret-token' },
    '/empty-host': { location: 'http://:80/secret-token' },
    '/ftp': { location: 'ftp://127.0.0.1/secret-token.png' },
    '/data': { location: `data:image/png;base64,${PNG.toString('base64')}` },
    '/javascript': { location: 'javascript:alert(1)' },
    '/missing': {},
    '/private': { location: 'http://10.0.0.1/secret-token.png' },
    '/loop': { location: '/loop' },
  };

  beforeAll(async () => {
    server = createHttpServer((req, res) => {
      if (req.url === '/cat.png') res.writeHead(200, { 'content-type': 'image/png' }).end(PNG);
      else if (req.url! in redirects) res.writeHead(302, redirects[req.url!]).end();
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
    base = `http://127.0.0.1:${port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const fetchFrom = (url: string, allow = ['127.0.0.1']) =>
    loadImage(url, 'messages[0].content[1].image_url.url', options(undefined, allow), never);

  it('fetches an image, following a relative redirect', async () => {
    expect(await fetchFrom(`${base}/cat.png`)).toEqual(PNG);
    expect(await fetchFrom(`${base}/relative`)).toEqual(PNG);
  });

  it('fetches by a name from the hosts file, through the default lookup path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loupe-hosts-'));
    try {
      const hostsFile = join(dir, 'hosts');
      await writeFile(hostsFile, '127.0.0.1 images.test\n');
      const resolve = systemResolver({ hostsFile, servers: ['127.0.0.1:9'] });
      const bytes = await loadImage(
        `http://images.test:${port}/relative`,
        'image_url',
        options(resolve, ['127.0.0.1']),
        never,
      );
      expect(bytes).toEqual(PNG);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.each([
    ['/invalid', 'bad_url', /127\.0\.0\.1:\d+ redirected to an invalid URL$/],
    ['/empty-host', 'bad_url', /redirected to an invalid URL$/],
    ['/ftp', 'bad_url', /redirected to a URL that is not http\(s\)$/],
    ['/data', 'bad_url', /redirected to a URL that is not http\(s\)$/],
    ['/javascript', 'bad_url', /redirected to a URL that is not http\(s\)$/],
    ['/missing', 'fetch_failed', /answered HTTP 302 without a Location$/],
    ['/private', 'blocked_address', /10\.0\.0\.1, a private address/],
    ['/loop', 'fetch_failed', /more than 2 redirects$/],
  ])(
    'refuses the redirect %s as %s, naming no more than the host',
    async (path, reason, message) => {
      const error = (await fetchFrom(`${base}${path}`).catch(
        (e: unknown) => e,
      )) as ImageSourceError;
      expect(error).toBeInstanceOf(ImageSourceError);
      expect(error).toMatchObject({
        reason,
        field: 'messages[0].content[1].image_url.url',
        message: expect.stringMatching(message),
      });
      expect(error.message).toMatch(/^`messages\[0\]\.content\[1\]\.image_url\.url`: /);
      expect(error.message).not.toMatch(/secret|alert|base64/);
    },
  );
});
