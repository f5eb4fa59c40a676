import { describe, expect, it } from 'vitest';
import { AllowList, blockedReason, refusal } from './address-policy.js';

describe('blockedReason', () => {
  // One address in every special-purpose range (IANA's IPv4 and IPv6 registries).
  it.each([
    // IPv4
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['10.1.2.3', 'private'],
    ['100.64.0.1', 'carrier-grade-nat'],
    ['100.127.255.255', 'carrier-grade-nat'],
    ['100.100.100.200', 'metadata'],
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['169.254.10.1', 'link-local'],
    ['169.254.169.254', 'metadata'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.0.0.8', 'reserved'], // IETF protocol assignments
    ['192.0.2.1', 'reserved'], // TEST-NET-1
    ['192.31.196.1', 'as112'],
    ['192.52.193.1', 'amt'],
    ['192.88.99.1', 'reserved'], // 6to4 relay anycast
    ['192.168.1.1', 'private'],
    ['192.175.48.1', 'as112'],
    ['198.18.0.1', 'reserved'], // benchmarking
    ['198.19.255.255', 'reserved'],
    ['198.51.100.7', 'reserved'], // TEST-NET-2
    ['203.0.113.9', 'reserved'], // TEST-NET-3
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['240.0.0.1', 'reserved'],
    ['255.255.255.255', 'broadcast'],
    // IPv6
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['0:0:0:0:0:0:0:1', 'loopback'],
    ['100::1', 'discard'],
    ['2001:2::1', 'benchmarking'],
    ['2001:3::1', 'amt'],
    ['2001:4:112::1', 'as112'],
    ['2620:4f:8000::1', 'as112'],
    ['2001:10::1', 'deprecated-orchid'],
    ['2001:20::1', 'orchid2'],
    ['2001:30::1', 'drone-remote-id'],
    ['2001:db8::1', 'reserved'], // documentation
    ['2001:100::1', 'reserved'], // IETF protocol assignments (2001::/23)
    ['3fff::1', 'reserved'], // documentation
    ['5f00::1', 'segment-routing'],
    ['fc00::1', 'unique-local'],
    ['fd12:3456::1', 'unique-local'],
    ['fd00:ec2::254', 'metadata'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['febf::1', 'link-local'],
    ['fec0::1', 'deprecated-site-local'],
    ['ff02::1', 'multicast'],
    ['4000::1', 'not-global-unicast'],
    ['64:ff9b:2::1', 'not-global-unicast'],
    // IPv6 carrying IPv4: IPv4-mapped, IPv4-compatible (deprecated), IPv4-translated.
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:10.0.0.1', 'private'],
    ['::ffff:a9fe:a9fe', 'metadata'],
    ['0:0:0:0:0:ffff:c0a8:101', 'private'],
    ['::10.0.0.1', 'private'],
    ['::8.8.8.8', 'ipv4-compatible'],
    ['::ffff:0:10.0.0.1', 'private'],
    ['::ffff:0:8.8.8.8', 'ipv4-translated'],
    // NAT64 (well-known and local-use prefixes)
    ['64:ff9b::10.0.0.1', 'private'],
    ['64:ff9b::7f00:1', 'loopback'],
    ['64:ff9b::a9fe:a9fe', 'metadata'],
    ['64:ff9b:1::c0a8:1', 'private'],
    ['64:ff9b:1:ab::a00:1', 'private'],
    // 6to4: the IPv4 address is bits 16-48.
    ['2002:a00:1::1', 'private'],
    ['2002:7f00:1::', 'loopback'],
    ['2002:a9fe:a9fe:1::1', 'metadata'],
    ['2002:c000:201::1', 'reserved'],
    // Teredo: server IPv4 in bits 32-64, client IPv4 inverted in the last 32 bits.
    ['2001:0:808:808:0:0:f5ff:fffe', 'private'], // client 10.0.0.1, server 8.8.8.8
    ['2001:0:a00:1:0:0:f7f7:f7f7', 'private'], // client 8.8.8.8, server 10.0.0.1
    ['2001:0:808:808::80ff:fffe', 'loopback'], // client 127.0.0.1
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'reserved'], // RFC 4380's example: 192.0.2.45
    ['not an ip', 'not-an-ip'],
    ['010.0.0.1', 'not-an-ip'],
    ['127.1', 'not-an-ip'],
    ['', 'not-an-ip'],
  ])('refuses %s (%s)', (ip, reason) => {
    expect(blockedReason(ip)).toBe(reason);
  });

  it.each([
    '93.184.216.34',
    '8.8.8.8',
    '1.1.1.1',
    '100.63.255.255',
    '100.128.0.1',
    '172.32.0.1',
    '192.169.0.1',
    '198.20.0.1',
    '223.255.255.254',
    '2606:4700::1111',
    '2a00:1450:4001::200e',
    '::ffff:8.8.8.8',
    '64:ff9b::8.8.8.8',
    '64:ff9b:1::808:808',
    '2002:808:808::1', // 6to4 for 8.8.8.8
    '2001:0:808:808:0:0:f7f7:f7f7', // Teredo, server and client 8.8.8.8
  ])('allows the public address %s', (ip) => {
    expect(blockedReason(ip)).toBeUndefined();
  });

  it('names the IPv4 address found inside an IPv6 one', () => {
    expect(refusal('2002:a00:1::1')).toEqual({
      reason: 'private',
      embedded: { form: '6to4', ipv4: '10.0.0.1' },
    });
    expect(refusal('2001:0:808:808:0:0:f5ff:fffe')).toEqual({
      reason: 'private',
      embedded: { form: 'teredo', ipv4: '10.0.0.1' },
    });
    expect(refusal('64:ff9b::a9fe:a9fe')).toEqual({
      reason: 'metadata',
      embedded: { form: 'nat64', ipv4: '169.254.169.254' },
    });
    expect(refusal('::ffff:127.0.0.1')?.embedded).toEqual({
      form: 'ipv4-mapped',
      ipv4: '127.0.0.1',
    });
    expect(refusal('fc00::1')).toEqual({ reason: 'unique-local' });
  });
});

describe('AllowList', () => {
  it('allows listed hosts, addresses and IPv4 and IPv6 blocks only', () => {
    const allow = new AllowList([
      '127.0.0.1/32',
      'Images.Internal',
      '::1',
      '10.8.0.0/16',
      'fd00:1::/32',
      '192.168.4.4',
    ]);
    expect(allow.allowsAddress('127.0.0.1')).toBe(true);
    expect(allow.allowsAddress('::ffff:127.0.0.1')).toBe(true);
    expect(allow.allowsAddress('127.0.0.2')).toBe(false);
    expect(allow.allowsAddress('10.8.200.1')).toBe(true);
    expect(allow.allowsAddress('10.9.0.1')).toBe(false);
    expect(allow.allowsAddress('192.168.4.4')).toBe(true);
    expect(allow.allowsAddress('192.168.4.5')).toBe(false);
    expect(allow.allowsAddress('::1')).toBe(true);
    expect(allow.allowsAddress('0:0::1')).toBe(true);
    expect(allow.allowsAddress('::2')).toBe(false);
    expect(allow.allowsAddress('fd00:1:ffff::9')).toBe(true);
    expect(allow.allowsAddress('fd00:2::9')).toBe(false);
    expect(allow.allowsAddress('not an ip')).toBe(false);
    expect(allow.allowsHost('images.internal')).toBe(true);
    expect(allow.allowsHost('images.external')).toBe(false);
  });

  it.each(['10.0.0.0/33', '10.0.0.0/x', '::1/129', 'images.internal/8', '10.0.0.0/'])(
    'refuses the malformed entry %s',
    (entry) => {
      expect(() => new AllowList([entry])).toThrow(/allow-list entry/);
    },
  );
});
