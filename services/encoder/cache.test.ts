import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { subImagesHash } from '../runtime/index.js';
import { EmbeddingCache, type CachedEmbeddings } from './cache.js';

const entry = (bytes: number): CachedEmbeddings => ({
  data: Buffer.alloc(bytes),
  shape: [1, 1, bytes / 2],
  dtype: 'float16',
});
const key = (n: number) =>
  EmbeddingCache.key({
    model: 'm',
    contentHash: Buffer.alloc(32, n),
    split: false,
    dtype: 'float16',
  });

describe('EmbeddingCache', () => {
  it('keys by model, hash, split and dtype', () => {
    const base = {
      model: 'm',
      contentHash: Buffer.alloc(32, 1),
      split: false,
      dtype: 'float16',
    } as const;
    const keys = new Set([
      EmbeddingCache.key(base),
      EmbeddingCache.key({ ...base, model: 'other' }),
      EmbeddingCache.key({ ...base, contentHash: Buffer.alloc(32, 2) }),
      EmbeddingCache.key({ ...base, split: true }),
      EmbeddingCache.key({ ...base, dtype: 'float32' }),
    ]);
    expect(keys.size).toBe(5);
  });

  it('evicts the least recently used to stay within its bytes', () => {
    let evictions = 0;
    const cache = new EmbeddingCache(3 * (1000 + 256), () => evictions++);
    for (const n of [1, 2, 3]) cache.set(key(n), entry(1000));
    expect([cache.size, cache.bytes]).toEqual([3, 3 * 1256]);
    expect(cache.get(key(1))).toBeDefined(); // 1 is now the most recent
    cache.set(key(4), entry(1000));
    expect(evictions).toBe(1);
    expect(cache.get(key(2))).toBeUndefined();
    expect([1, 3, 4].map((n) => cache.get(key(n)) !== undefined)).toEqual([true, true, true]);

    cache.set(key(5), entry(2000)); // needs two slots
    expect(evictions).toBe(3);
    expect(cache.bytes).toBeLessThanOrEqual(cache.maxBytes);
    expect(cache.get(key(4))).toBeDefined(); // used last before 5 came
  });

  it('does not store an entry larger than the whole cache, and replaces an entry in place', () => {
    const cache = new EmbeddingCache(1000);
    cache.set(key(1), entry(2000));
    expect(cache.size).toBe(0);
    cache.set(key(1), entry(100));
    cache.set(key(1), entry(200));
    expect([cache.size, cache.bytes]).toEqual([1, 456]);
  });
});

describe('subImagesHash', () => {
  const sub = (height: number, width: number, fill: number) => ({
    height,
    width,
    pixels: new Uint8Array(3 * height * width).fill(fill),
  });

  it('is the SHA-256 of the documented layout', () => {
    const subs = [sub(14, 28, 1), sub(28, 14, 2)];
    const u32 = (...values: number[]) => {
      const b = Buffer.alloc(4 * values.length);
      values.forEach((v, i) => b.writeUInt32LE(v, 4 * i));
      return b;
    };
    const expected = createHash('sha256')
      .update('loupe.v1.Encoder/sub_images/sha256/1\0')
      .update(u32(2))
      .update(u32(14, 28, 3 * 14 * 28))
      .update(subs[0]!.pixels)
      .update(u32(28, 14, 3 * 28 * 14))
      .update(subs[1]!.pixels)
      .digest();
    expect(subImagesHash(subs)).toEqual(expected);
  });

  it('changes with any pixel, side, the order or the count of the sub-images', () => {
    const a = sub(14, 28, 1);
    const b = sub(28, 14, 1); // same bytes, other sides
    const c = sub(14, 28, 1);
    c.pixels[c.pixels.length - 1] = 2;
    const hashes = [[a], [b], [c], [a, b], [b, a], [a, a], []].map((s) =>
      subImagesHash(s).toString('hex'),
    );
    expect(new Set(hashes).size).toBe(hashes.length);
    expect(subImagesHash([sub(14, 28, 1)])).toEqual(subImagesHash([a]));
  });
});
