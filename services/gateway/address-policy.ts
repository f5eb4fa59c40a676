// Which addresses the gateway may fetch images from. Pure functions over IP literals: the
// fetcher resolves a host name first, checks every address here, and connects only to an
// address that passed (no second lookup an attacker could answer differently).
import { isIP } from 'node:net';

/** Why an address is refused, or undefined when it is public. */
export type BlockedReason =
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'metadata'
  | 'carrier-grade-nat'
  | 'unspecified'
  | 'multicast'
  | 'reserved'
  | 'not-an-ip';

const V4_RANGES: Array<[cidr: string, reason: BlockedReason]> = [
  ['0.0.0.0/8', 'unspecified'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'carrier-grade-nat'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.169.254/32', 'metadata'],
  ['169.254.0.0/16', 'link-local'],
  ['172.16.0.0/12', 'private'],
  ['192.0.0.0/24', 'reserved'],
  ['192.168.0.0/16', 'private'],
  ['198.18.0.0/15', 'reserved'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved'],
];

function v4ToInt(ip: string): number {
  return ip.split('.').reduce((n, part) => n * 256 + Number(part), 0);
}

function inV4(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/') as [string, string];
  const size = 2 ** (32 - Number(bits));
  const start = Math.floor(v4ToInt(base) / size) * size;
  const n = v4ToInt(ip);
  return n >= start && n < start + size;
}

/** The 8 16-bit groups of an IPv6 address (with an embedded IPv4 tail expanded). */
function v6Groups(ip: string): number[] {
  let text = ip.toLowerCase().split('%')[0]!;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = v4ToInt(v4[1]!);
    text =
      text.slice(0, -v4[1]!.length) + `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const a = head ? head.split(':') : [];
  const b = tail ? tail.split(':') : [];
  const fill = tail === undefined ? [] : new Array<string>(8 - a.length - b.length).fill('0');
  return [...a, ...fill, ...b].map((g) => parseInt(g || '0', 16));
}

/** Why `ip` (an IP literal) must not be fetched from; undefined when it is public. */
export function blockedReason(ip: string): BlockedReason | undefined {
  const family = isIP(ip);
  if (family === 4) return V4_RANGES.find(([cidr]) => inV4(ip, cidr))?.[1];
  if (family !== 6) return 'not-an-ip';
  const g = v6Groups(ip);
  const first = g[0]!;
  if (g.every((x) => x === 0)) return 'unspecified';
  if (g.slice(0, 7).every((x) => x === 0) && g[7] === 1) return 'loopback';
  // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible forms: judge the IPv4 address.
  if (g.slice(0, 5).every((x) => x === 0) && (g[5] === 0xffff || g[5] === 0)) {
    const v4 = `${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`;
    return blockedReason(v4) ?? (g[5] === 0 ? 'reserved' : undefined);
  }
  if (first === 0x64 && g[1] === 0xff9b) return 'reserved'; // NAT64
  if ((first & 0xfe00) === 0xfc00) return 'private'; // fc00::/7 unique local
  if ((first & 0xffc0) === 0xfe80) return 'link-local'; // fe80::/10
  if ((first & 0xffc0) === 0xfec0) return 'private'; // fec0::/10 site-local (deprecated)
  if ((first & 0xff00) === 0xff00) return 'multicast';
  return undefined;
}

/**
 * An allow-list of hosts and CIDR blocks ("127.0.0.1/32,images.internal"), for deployments
 * that fetch from private addresses on purpose (and for tests, from loopback).
 */
export class AllowList {
  readonly #hosts = new Set<string>();
  readonly #v4: string[] = [];
  readonly #exact = new Set<string>();

  constructor(entries: readonly string[]) {
    for (const raw of entries.map((e) => e.trim().toLowerCase()).filter(Boolean)) {
      const [base] = raw.split('/') as [string];
      if (isIP(base) === 4 && raw.includes('/')) this.#v4.push(raw);
      else if (isIP(base) !== 0) this.#exact.add(base);
      else this.#hosts.add(raw);
    }
  }

  allowsHost(host: string): boolean {
    return this.#hosts.has(host.toLowerCase());
  }

  allowsAddress(ip: string): boolean {
    if (this.#exact.has(ip.toLowerCase())) return true;
    return isIP(ip) === 4 && this.#v4.some((cidr) => inV4(ip, cidr));
  }
}
