// Which addresses the gateway may fetch images from. Pure functions over IP literals: the
// fetcher resolves a host name first, checks every address here, and connects only to an
// address that passed (no second lookup an attacker could answer differently).
//
// The special-purpose ranges come from ipaddr.js (IANA's IPv4 and IPv6 special-purpose
// registries): any address it does not call `unicast` is refused. IPv6 addresses that carry an
// IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo) are judged by the IPv4 address they carry, so
// that a public-looking IPv6 literal cannot smuggle a private IPv4 destination through.
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

type IPv4 = ipaddr.IPv4;
type IPv6 = ipaddr.IPv6;

/**
 * Why an address is refused, or undefined when it is public: one of ipaddr.js's range names in
 * kebab case (`loopback`, `private`, `link-local`, `carrier-grade-nat`, `unspecified`,
 * `broadcast`, `multicast`, `reserved`, `benchmarking`, `amt`, `as112`, `unique-local`,
 * `deprecated-site-local`, `discard`, `ipv4-translated`, `deprecated-orchid`, `orchid2`,
 * `drone-remote-id`, `segment-routing`, ...), or `metadata` (a cloud metadata service),
 * `ipv4-compatible` (deprecated ::a.b.c.d), `not-global-unicast` (IPv6 outside 2000::/3 that
 * no registry names), `not-an-ip`.
 */
export type BlockedReason = string;

/** How an IPv6 address carries an IPv4 one. */
export type EmbeddingForm =
  'ipv4-mapped' | 'ipv4-compatible' | 'ipv4-translated' | 'nat64' | '6to4' | 'teredo';

export interface Refusal {
  reason: BlockedReason;
  /** Set when the refused IPv4 address was found inside an IPv6 one. */
  embedded?: { form: EmbeddingForm; ipv4: string };
}

/** Cloud instance-metadata endpoints, named as such (they are refused anyway). */
const METADATA = new Set([
  '169.254.169.254', // AWS, GCP, Azure, OpenStack, ...
  '100.100.100.200', // Alibaba Cloud
  'fd00:ec2:0:0:0:0:0:254', // AWS over IPv6 (normalized form)
]);

/** ipaddr.js range names whose kebab-case form would read badly in a message. */
const RENAMED: Record<string, string> = {
  rfc6145: 'ipv4-translated',
  rfc6052: 'nat64',
  as112v6: 'as112',
  droneRemoteIdProtocolEntityTags: 'drone-remote-id',
};

function reasonFor(range: string): BlockedReason {
  return RENAMED[range] ?? range.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** `ip` parsed, or undefined when it is not an IP literal (node's strict syntax). */
function parse(ip: string): IPv4 | IPv6 | undefined {
  const family = isIP(ip);
  if (family === 4) return ipaddr.IPv4.parse(ip); // dotted decimal only: isIP refuses 010.0.0.1
  if (family !== 6) return undefined;
  // The zone (fe80::1%eth0) does not change the range. WHATWG URL serialization rewrites a
  // dotted IPv4 tail into hex groups: ipaddr.js 2.5 misreads "::a.b.c.d" as ::ffff:a.b.c.d.
  const bare = ip.split('%')[0]!;
  return ipaddr.IPv6.parse(new URL(`http://[${bare}]/`).hostname.slice(1, -1));
}

function v4FromGroups(high: number, low: number): IPv4 {
  return new ipaddr.IPv4([high >> 8, high & 0xff, low >> 8, low & 0xff]);
}

/** The IPv4 addresses an IPv6 address carries, and how; undefined for a plain IPv6 address. */
function embeddedV4(addr: IPv6): { form: EmbeddingForm; ipv4: IPv4[] } | undefined {
  const g = addr.parts;
  const zero = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  const tail = () => v4FromGroups(g[6]!, g[7]!);
  if (zero(0, 5) && g[5] === 0xffff) return { form: 'ipv4-mapped', ipv4: [tail()] };
  if (zero(0, 4) && g[4] === 0xffff && g[5] === 0)
    return { form: 'ipv4-translated', ipv4: [tail()] };
  // ::a.b.c.d, but not :: or ::1 (nor ::0.0.0.x in general, which no one deploys).
  if (zero(0, 6) && g[6] !== 0) return { form: 'ipv4-compatible', ipv4: [tail()] };
  // NAT64: 64:ff9b::/96 (RFC 6052) and the local-use 64:ff9b:1::/48 (RFC 8215), judged with
  // the /96 layout DNS64 deployments use: the IPv4 address is the last 32 bits.
  if (g[0] === 0x64 && g[1] === 0xff9b && (zero(2, 6) || g[2] === 1)) {
    return { form: 'nat64', ipv4: [tail()] };
  }
  // 6to4 (RFC 3056): 2002:AABB:CCDD::/48, the IPv4 address is bits 16-48.
  if (g[0] === 0x2002) return { form: '6to4', ipv4: [v4FromGroups(g[1]!, g[2]!)] };
  // Teredo (RFC 4380): 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC, the server's IPv4 address in
  // bits 32-64 and the client's, inverted, in the last 32 bits.
  if (g[0] === 0x2001 && g[1] === 0) {
    return {
      form: 'teredo',
      ipv4: [v4FromGroups(g[2]!, g[3]!), v4FromGroups(~g[6]! & 0xffff, ~g[7]! & 0xffff)],
    };
  }
  return undefined;
}

/** Forms judged only by the IPv4 address they carry (the others are refused in any case). */
const TRANSPARENT = new Set<EmbeddingForm>(['ipv4-mapped', 'nat64', '6to4', 'teredo']);

function judge(addr: IPv4 | IPv6): Refusal | undefined {
  if (METADATA.has(addr.toNormalizedString())) return { reason: 'metadata' };
  if (addr.kind() === 'ipv4') {
    const range = (addr as IPv4).range();
    return range === 'unicast' ? undefined : { reason: reasonFor(range) };
  }
  const v6 = addr as IPv6;
  const embedded = embeddedV4(v6);
  if (embedded) {
    for (const v4 of embedded.ipv4) {
      const refused = judge(v4);
      if (refused) {
        return { reason: refused.reason, embedded: { form: embedded.form, ipv4: v4.toString() } };
      }
    }
    if (TRANSPARENT.has(embedded.form)) return undefined;
    return { reason: embedded.form };
  }
  const range = v6.range() as string;
  if (range !== 'unicast') return { reason: reasonFor(range) };
  // Everything outside 2000::/3 that no registry names is unassigned or reserved by the IETF.
  if ((v6.parts[0]! & 0xe000) !== 0x2000) return { reason: 'not-global-unicast' };
  return undefined;
}

/** Why `ip` (an IP literal) must not be fetched from, with any IPv4 address found inside it. */
export function refusal(ip: string): Refusal | undefined {
  const addr = parse(ip);
  return addr ? judge(addr) : { reason: 'not-an-ip' };
}

/** Why `ip` (an IP literal) must not be fetched from; undefined when it is public. */
export function blockedReason(ip: string): BlockedReason | undefined {
  return refusal(ip)?.reason;
}

/**
 * An allow-list of hosts, addresses and CIDR blocks ("127.0.0.1/32,images.internal,fd00::/8"),
 * for deployments that fetch from private addresses on purpose (and for tests, from loopback).
 * An entry that looks like a CIDR block but is not a valid one is an error.
 */
export class AllowList {
  readonly #hosts = new Set<string>();
  readonly #blocks: Array<[IPv4 | IPv6, number]> = [];

  constructor(entries: readonly string[]) {
    for (const raw of entries.map((e) => e.trim().toLowerCase()).filter(Boolean)) {
      const [base, bits] = raw.split('/') as [string, string | undefined];
      const addr = parse(base);
      if (!addr && bits === undefined) {
        this.#hosts.add(raw.replace(/^\[|\]$/g, ''));
        continue;
      }
      const prefix = bits === undefined ? (addr?.kind() === 'ipv4' ? 32 : 128) : Number(bits);
      const max = addr?.kind() === 'ipv4' ? 32 : 128;
      if (!addr || !/^\d{1,3}$/.test(bits ?? '0') || prefix > max) {
        throw new Error(`allow-list entry "${raw}" is neither a host name, an address nor a CIDR`);
      }
      this.#blocks.push([addr, prefix]);
    }
  }

  allowsHost(host: string): boolean {
    return this.#hosts.has(host.toLowerCase());
  }

  /** Whether `ip` is in a listed block (an IPv4-mapped address counts as its IPv4 address). */
  allowsAddress(ip: string): boolean {
    const addr = parse(ip);
    if (!addr) return false;
    const candidates: Array<IPv4 | IPv6> = [addr];
    if (addr.kind() === 'ipv6' && (addr as IPv6).isIPv4MappedAddress()) {
      candidates.push((addr as IPv6).toIPv4Address());
    }
    return this.#blocks.some(([base, bits]) =>
      candidates.some((a) => a.kind() === base.kind() && (a as IPv4).match(base as IPv4, bits)),
    );
  }
}
