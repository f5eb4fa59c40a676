// The image fetcher's refusals through an injected resolver: a name that resolves to a
// private or metadata address is refused before any connection is attempted.
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { AllowList } from './address-policy.js';
import { loadImage, type ImageSourceOptions } from './image-source.js';

const options = (
  resolve: ImageSourceOptions['resolve'],
  allow: string[] = [],
): ImageSourceOptions => ({
  maxBytes: 1 << 20,
  timeoutMs: 2000,
  connectTimeoutMs: 1000,
  maxRedirects: 2,
  allow: new AllowList(allow),
  resolve,
});
const never = new AbortController().signal;

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
  ])('refuses a name that resolves to %j, without connecting', async (addresses, message) => {
    // A listener on loopback: had the fetcher connected anywhere here, it would have counted.
    let connections = 0;
    const server = createServer(() => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const asked: string[] = [];
    try {
      await expect(
        loadImage(
          'http://images.example/cat.png',
          'image_url',
          options(async (host) => (asked.push(host), addresses)),
          never,
        ),
      ).rejects.toMatchObject({
        reason: 'blocked_address',
        message: expect.stringMatching(message),
      });
      expect(asked).toEqual(['images.example']);
      expect(connections).toBe(0);
    } finally {
      server.close();
    }
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
});
