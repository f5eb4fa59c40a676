// Images named in a chat request: `data:` URLs decoded under a byte cap, `http(s)` URLs fetched
// safely. A host name is resolved once, every address is checked against the address policy,
// and the connection is pinned to a checked address; each redirect goes through the same
// checks; connect and total timeouts and the byte cap hold while the body streams; the bytes
// must sniff as an accepted image format. Every refusal is an ImageSourceError naming why.
import { lookup as dnsLookup } from 'node:dns/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { sniffImageFormat } from '../model/index.js';
import { type AllowList, blockedReason } from './address-policy.js';

export class ImageSourceError extends Error {
  override readonly name = 'ImageSourceError';
  constructor(
    /** Stable reason: bad_url, too_large, blocked_address, fetch_failed, timeout, not_an_image, ... */
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

export type Resolver = (host: string) => Promise<Array<{ address: string; family: number }>>;

export interface ImageSourceOptions {
  maxBytes: number;
  /** Whole fetch, redirects included, ms. */
  timeoutMs: number;
  connectTimeoutMs: number;
  maxRedirects: number;
  allow: AllowList;
  /** Name resolution (tests inject one); default the system resolver. */
  resolve?: Resolver;
}

const systemResolve: Resolver = (host) => dnsLookup(host, { all: true, verbatim: true });

/** The image bytes `url` names (for messages, `field` names it in the request). */
export async function loadImage(
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

/** The address to connect to for `host`, after the policy; throws when none may be used. */
async function pinnedAddress(
  host: string,
  field: string,
  { allow, resolve = systemResolve }: ImageSourceOptions,
): Promise<{ address: string; family: number }> {
  const bare = host.replace(/^\[|\]$/g, '');
  const addresses = isIP(bare)
    ? [{ address: bare, family: isIP(bare) }]
    : await resolve(bare).catch((error: Error) => {
        throw new ImageSourceError(
          'fetch_failed',
          `\`${field}\`: cannot resolve ${host}: ${error.message}`,
        );
      });
  if (addresses.length === 0)
    throw new ImageSourceError('fetch_failed', `\`${field}\`: ${host} has no address`);
  const hostAllowed = allow.allowsHost(bare);
  for (const a of addresses) {
    const why = blockedReason(a.address);
    if (why && !hostAllowed && !allow.allowsAddress(a.address)) {
      throw new ImageSourceError(
        'blocked_address',
        `\`${field}\`: ${host} resolves to ${a.address}, a ${why} address; images are only fetched from public addresses (allow-list: LOUPE_GATEWAY_FETCH_ALLOW)`,
      );
    }
  }
  return addresses[0]!;
}

async function fetchImage(
  url: string,
  field: string,
  options: ImageSourceOptions,
  callerSignal: AbortSignal,
): Promise<Buffer> {
  const signal = AbortSignal.any([callerSignal, AbortSignal.timeout(options.timeoutMs)]);
  let current = url;
  for (let redirects = 0; ; redirects++) {
    let target: URL;
    try {
      target = new URL(current);
    } catch {
      throw new ImageSourceError(
        'bad_url',
        `\`${field}\`: "${current.slice(0, 60)}" is not a valid URL`,
      );
    }
    if (target.protocol !== 'http:' && target.protocol !== 'https:') {
      throw new ImageSourceError('bad_url', `\`${field}\`: redirected to a ${target.protocol} URL`);
    }
    const pinned = await pinnedAddress(target.hostname, field, options);
    const response = await get(target, pinned, options, signal, field);
    const status = response.statusCode ?? 0;
    if (status >= 300 && status < 400 && response.headers.location) {
      response.resume();
      if (redirects >= options.maxRedirects) {
        throw new ImageSourceError(
          'fetch_failed',
          `\`${field}\`: more than ${options.maxRedirects} redirects`,
        );
      }
      current = new URL(response.headers.location, target).href;
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
  pinned: { address: string; family: number },
  { connectTimeoutMs }: ImageSourceOptions,
  signal: AbortSignal,
  field: string,
): Promise<IncomingMessage> {
  // The connection goes to the checked address whatever the name resolves to now.
  const lookup: LookupFunction = (_host, opts, callback) => {
    if ((opts as { all?: boolean }).all) {
      (callback as unknown as (e: null, a: Array<{ address: string; family: number }>) => void)(
        null,
        [pinned],
      );
    } else callback(null, pinned.address, pinned.family);
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
