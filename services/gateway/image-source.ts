// Images named in a chat request: `data:` URLs decoded under a byte cap, `http(s)` URLs fetched
// safely. A host name is resolved once (asynchronously, with c-ares, under the fetch's deadline),
// every address is checked against the address policy, and the connection is pinned to the
// checked addresses; each redirect goes through the same checks; connect and total timeouts and
// the byte cap hold while the body streams; the bytes must sniff as an accepted image format.
// Every refusal is an ImageSourceError naming why, and naming no more of a URL than its host.
import { Resolver as DnsResolver } from 'node:dns/promises';
import { readFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { sniffImageFormat } from '../model/index.js';
import { type AllowList, refusal } from './address-policy.js';

export class ImageSourceError extends Error {
  override readonly name = 'ImageSourceError';
  /** The request parameter the image came from (set by loadImage). */
  field: string | undefined;
  constructor(
    /** Stable reason: bad_url, too_large, blocked_address, fetch_failed, timeout, not_an_image, ... */
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ResolvedAddress {
  address: string;
  family: number;
}

export interface ResolveOptions {
  /** Aborted on the lookup's deadline or when the client goes away: stop and settle. */
  signal: AbortSignal;
  /** Time left for the lookup, ms (the signal enforces it; a resolver may size its tries). */
  timeoutMs: number;
}

/**
 * Name resolution for image hosts (tests inject one). The fetcher also stops waiting when the
 * signal aborts, whether or not the resolver settles.
 */
export type Resolver = (host: string, options: ResolveOptions) => Promise<ResolvedAddress[]>;

export interface ImageSourceOptions {
  maxBytes: number;
  /** Whole fetch, redirects included, ms. */
  timeoutMs: number;
  /** Each name lookup, and each connection, ms (both within the whole fetch's deadline). */
  connectTimeoutMs: number;
  maxRedirects: number;
  allow: AllowList;
  /** Name resolution (tests inject one); default systemResolver(). */
  resolve?: Resolver;
}

export interface SystemResolverOptions {
  /** DNS servers ("127.0.0.1:5353"); default the system's (/etc/resolv.conf). */
  servers?: string[];
  /** A hosts file consulted before DNS, or null for none; default /etc/hosts. */
  hostsFile?: string | null;
  /** Attempts per server and query (c-ares `tries`); default 2. */
  tries?: number;
}

const HOSTS_TTL_MS = 5_000;

function parseHosts(text: string): Map<string, ResolvedAddress[]> {
  const names = new Map<string, ResolvedAddress[]>();
  for (const line of text.split('\n')) {
    const [address, ...aliases] = line.replace(/#.*/, '').trim().split(/\s+/);
    const family = address ? isIP(address) : 0;
    if (!family) continue;
    for (const name of aliases.map((a) => a.toLowerCase())) {
      const list = names.get(name) ?? [];
      if (!list.some((a) => a.address === address)) list.push({ address: address!, family });
      names.set(name, list);
    }
  }
  return names;
}

/**
 * The default resolver: the hosts file first (as the system's resolver does; c-ares queries
 * skip it), then `localhost` and `*.localhost` as loopback (RFC 6761), then A and AAAA queries
 * in parallel through c-ares, which runs on the event loop rather than on libuv's thread pool
 * (where getaddrinfo would queue behind file and crypto work, with no timeout). Each lookup has
 * its own c-ares channel, cancelled when the signal aborts. Search domains from resolv.conf are
 * not applied: image hosts are fully qualified names.
 */
export function systemResolver(config: SystemResolverOptions = {}): Resolver {
  const { servers, hostsFile = '/etc/hosts', tries = 2 } = config;
  let hosts: { at: number; names: Promise<Map<string, ResolvedAddress[]>> } | undefined;
  const hostsEntries = (name: string) => {
    if (hostsFile === null) return Promise.resolve(undefined);
    if (!hosts || Date.now() - hosts.at > HOSTS_TTL_MS) {
      hosts = {
        at: Date.now(),
        names: readFile(hostsFile, 'utf8').then(parseHosts, () => new Map()),
      };
    }
    return hosts.names.then((names) => names.get(name));
  };
  return async (host, { signal, timeoutMs }) => {
    const name = host.toLowerCase().replace(/\.$/, '');
    const listed = await hostsEntries(name);
    if (listed) return listed;
    if (name === 'localhost' || name.endsWith('.localhost')) {
      return [
        { address: '127.0.0.1', family: 4 },
        { address: '::1', family: 6 },
      ];
    }
    signal.throwIfAborted();
    // c-ares backs off between tries; the signal, not c-ares, bounds the whole lookup.
    const resolver = new DnsResolver({ timeout: Math.max(1, Math.ceil(timeoutMs / 3)), tries });
    if (servers) resolver.setServers(servers);
    const cancel = () => resolver.cancel();
    signal.addEventListener('abort', cancel, { once: true });
    try {
      const [v4, v6] = await Promise.allSettled([resolver.resolve4(host), resolver.resolve6(host)]);
      signal.throwIfAborted();
      const addresses = [
        ...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []),
        ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : []),
      ];
      if (addresses.length > 0) return addresses;
      // Both failed: report the more telling error (no data for one family says little).
      const errors = [v4, v6].flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
      if (errors.length === 0) return [];
      throw errors.find((e) => (e as NodeJS.ErrnoException).code !== 'ENODATA') ?? errors[0]!;
    } finally {
      signal.removeEventListener('abort', cancel);
    }
  };
}

const defaultResolve = systemResolver();

/** The image bytes `url` names (for messages, `field` names it in the request). */
export async function loadImage(
  url: string,
  field: string,
  options: ImageSourceOptions,
  signal: AbortSignal,
): Promise<Buffer> {
  try {
    return await load(url, field, options, signal);
  } catch (error) {
    if (error instanceof ImageSourceError) error.field ??= field;
    throw error;
  }
}

async function load(
  url: string,
  field: string,
  options: ImageSourceOptions,
  signal: AbortSignal,
): Promise<Buffer> {
  let bytes: Buffer;
  if (url.startsWith('data:')) bytes = decodeDataUrl(url, field, options.maxBytes);
  else if (/^https?:\/\//i.test(url)) bytes = await fetchImage(url, field, options, signal);
  else {
    throw new ImageSourceError(
      'bad_url',
      `\`${field}\` must be a data: URL or an http(s) URL, got "${url.slice(0, 40)}"`,
    );
  }
  const sniffed = sniffImageFormat(bytes);
  if (sniffed.format === undefined) {
    throw new ImageSourceError(
      'not_an_image',
      `\`${field}\` is not an accepted image (it looks like ${sniffed.looksLike})`,
    );
  }
  return bytes;
}

function decodeDataUrl(url: string, field: string, maxBytes: number): Buffer {
  const comma = url.indexOf(',');
  const header = url.slice(5, comma);
  if (comma < 0 || !/;base64$/i.test(header)) {
    throw new ImageSourceError(
      'bad_url',
      `\`${field}\` must be a base64 data: URL (data:image/...;base64,...)`,
    );
  }
  const payload = url.slice(comma + 1);
  const approx = Math.floor((payload.length * 3) / 4);
  if (approx > maxBytes + 2) {
    throw new ImageSourceError(
      'too_large',
      `\`${field}\` holds about ${approx} bytes, over the limit of ${maxBytes}`,
    );
  }
  const bytes = Buffer.from(payload, 'base64');
  if (bytes.byteLength > maxBytes) {
    throw new ImageSourceError(
      'too_large',
      `\`${field}\` holds ${bytes.byteLength} bytes, over the limit of ${maxBytes}`,
    );
  }
  if (bytes.byteLength === 0) throw new ImageSourceError('bad_url', `\`${field}\` is empty`);
  return bytes;
}

/** Settles like `promise`, or rejects with the signal's reason as soon as it aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * The addresses `host` resolves to, under the lookup's deadline: the connect timeout, and no
 * later than the whole fetch's. An IP literal is its own address.
 */
async function resolveHost(
  host: string,
  field: string,
  { connectTimeoutMs, resolve = defaultResolve }: ImageSourceOptions,
  signal: AbortSignal,
  deadline: number,
): Promise<ResolvedAddress[]> {
  const bare = host.replace(/^\[|\]$/g, '');
  const family = isIP(bare);
  if (family) return [{ address: bare, family }];
  const timeoutMs = Math.max(1, Math.min(connectTimeoutMs, deadline - Date.now()));
  const lookupTimeout = AbortSignal.timeout(timeoutMs);
  const lookupSignal = AbortSignal.any([signal, lookupTimeout]);
  try {
    return await untilAborted(resolve(bare, { signal: lookupSignal, timeoutMs }), lookupSignal);
  } catch (error) {
    if (signal.aborted) throw timeoutOrCancel(signal, field);
    if (lookupTimeout.aborted) {
      throw new ImageSourceError(
        'timeout',
        `\`${field}\`: no answer resolving ${host} within ${timeoutMs} ms`,
      );
    }
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    throw new ImageSourceError(
      'fetch_failed',
      `\`${field}\`: cannot resolve ${host}${code ? ` (${code})` : ''}`,
    );
  }
}

/** The addresses to connect to for `host`, after the policy; throws when any is refused. */
async function checkedAddresses(
  host: string,
  field: string,
  options: ImageSourceOptions,
  signal: AbortSignal,
  deadline: number,
): Promise<ResolvedAddress[]> {
  const addresses = await resolveHost(host, field, options, signal, deadline);
  if (addresses.length === 0)
    throw new ImageSourceError('fetch_failed', `\`${field}\`: ${host} has no address`);
  const { allow } = options;
  const hostAllowed = allow.allowsHost(host.replace(/^\[|\]$/g, ''));
  for (const a of addresses) {
    const refused = refusal(a.address);
    if (refused && !hostAllowed && !allow.allowsAddress(a.address)) {
      const inside = refused.embedded
        ? ` (${refused.embedded.form} for ${refused.embedded.ipv4})`
        : '';
      throw new ImageSourceError(
        'blocked_address',
        `\`${field}\`: ${host} resolves to ${a.address}, a ${refused.reason} address${inside}; images are only fetched from public addresses (allow-list: LOUPE_GATEWAY_FETCH_ALLOW)`,
      );
    }
  }
  // IPv4 first (hosts without IPv6 routes are common); Node's happy eyeballs tries the rest.
  return [...addresses].sort((a, b) => a.family - b.family);
}

/** The next URL a redirect names, or an ImageSourceError naming no more than the host. */
function redirectTarget(response: IncomingMessage, from: URL, field: string): URL {
  const location = response.headers.location;
  const status = response.statusCode ?? 0;
  if (!location) {
    throw new ImageSourceError(
      'fetch_failed',
      `\`${field}\`: ${from.host} answered HTTP ${status} without a Location`,
    );
  }
  let target: URL;
  try {
    target = new URL(location, from);
  } catch {
    throw new ImageSourceError(
      'bad_url',
      `\`${field}\`: ${from.host} redirected to an invalid URL`,
    );
  }
  if (target.protocol !== 'http:' && target.protocol !== 'https:') {
    throw new ImageSourceError(
      'bad_url',
      `\`${field}\`: ${from.host} redirected to a URL that is not http(s)`,
    );
  }
  return target;
}

async function fetchImage(
  url: string,
  field: string,
  options: ImageSourceOptions,
  callerSignal: AbortSignal,
): Promise<Buffer> {
  const deadline = Date.now() + options.timeoutMs;
  const signal = AbortSignal.any([callerSignal, AbortSignal.timeout(options.timeoutMs)]);
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    throw new ImageSourceError('bad_url', `\`${field}\`: "${url.slice(0, 60)}" is not a valid URL`);
  }
  for (let redirects = 0; ; redirects++) {
    const addresses = await checkedAddresses(target.hostname, field, options, signal, deadline);
    const response = await get(target, addresses, options, signal, field);
    const status = response.statusCode ?? 0;
    if (status >= 300 && status < 400 && status !== 304) {
      response.resume();
      const next = redirectTarget(response, target, field);
      if (redirects >= options.maxRedirects) {
        throw new ImageSourceError(
          'fetch_failed',
          `\`${field}\`: more than ${options.maxRedirects} redirects`,
        );
      }
      target = next;
      continue;
    }
    if (status !== 200) {
      response.resume();
      throw new ImageSourceError(
        'fetch_failed',
        `\`${field}\`: ${target.host} answered HTTP ${status}`,
      );
    }
    return readCapped(response, options.maxBytes, field, signal);
  }
}

function get(
  target: URL,
  addresses: ResolvedAddress[],
  { connectTimeoutMs }: ImageSourceOptions,
  signal: AbortSignal,
  field: string,
): Promise<IncomingMessage> {
  // The connection goes to the checked addresses whatever the name resolves to now.
  const lookup: LookupFunction = (_host, opts, callback) => {
    if ((opts as { all?: boolean }).all) {
      (callback as unknown as (e: null, a: ResolvedAddress[]) => void)(null, addresses);
    } else callback(null, addresses[0]!.address, addresses[0]!.family);
  };
  const request = target.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      target,
      { method: 'GET', lookup, signal, headers: { accept: 'image/*' } },
      resolve,
    );
    const connectTimer = setTimeout(() => {
      req.destroy(
        new ImageSourceError(
          'timeout',
          `\`${field}\`: no connection to ${target.host} within ${connectTimeoutMs} ms`,
        ),
      );
    }, connectTimeoutMs);
    req.on('socket', (socket) => {
      if (!socket.connecting) clearTimeout(connectTimer);
      else socket.once('connect', () => clearTimeout(connectTimer));
    });
    req.on('error', (error) => {
      clearTimeout(connectTimer);
      if (error instanceof ImageSourceError) reject(error);
      else if (signal.aborted) reject(timeoutOrCancel(signal, field));
      else
        reject(
          new ImageSourceError(
            'fetch_failed',
            `\`${field}\`: fetching ${target.host} failed: ${error.message}`,
          ),
        );
    });
    req.end();
  });
}

function timeoutOrCancel(signal: AbortSignal, field: string): Error {
  const reason = signal.reason as Error | undefined;
  if (reason?.name === 'TimeoutError')
    return new ImageSourceError('timeout', `\`${field}\`: the fetch took too long`);
  return reason ?? new Error('cancelled');
}

function readCapped(
  response: IncomingMessage,
  maxBytes: number,
  field: string,
  signal: AbortSignal,
): Promise<Buffer> {
  const declared = Number(response.headers['content-length'] ?? NaN);
  if (declared > maxBytes) {
    const refused = Promise.reject(
      new ImageSourceError(
        'too_large',
        `\`${field}\` is ${declared} bytes, over the limit of ${maxBytes}`,
      ),
    );
    response.destroy();
    return refused;
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    response.on('data', (chunk: Buffer) => {
      size += chunk.byteLength;
      if (size > maxBytes) {
        // Reject first: destroying the response emits its own error events synchronously.
        reject(
          new ImageSourceError('too_large', `\`${field}\` is over the limit of ${maxBytes} bytes`),
        );
        response.destroy();
        return;
      }
      chunks.push(chunk);
    });
    response.on('end', () => resolve(Buffer.concat(chunks)));
    response.on('error', (error) =>
      reject(
        signal.aborted
          ? timeoutOrCancel(signal, field)
          : new ImageSourceError('fetch_failed', `\`${field}\`: ${error.message}`),
      ),
    );
    response.on('aborted', () => reject(timeoutOrCancel(signal, field)));
  });
}
