// The prefix cache's bookkeeping and its block keys, alone.
import { describe, expect, it } from 'vitest';
import { BlockKeys } from './block-keys.js';
import { PrefixCache } from './prefix-cache.js';

describe('PrefixCache', () => {
  it('matches the longest cached prefix, never a pending block, and pins what it matched', () => {
    const cache = new PrefixCache(4);
    const [a, b, c] = [cache.reserve('a'), cache.reserve('b'), cache.reserve('c')] as number[];
    expect([a, b, c]).toEqual([0, 1, 2]);
    expect(cache.match(['a', 'b'])).toEqual([]); // still being saved
    expect(cache.reserve('a')).toBe('cached');
    cache.commit([a!, b!]);
    expect(cache.match(['a', 'b', 'c', 'd'])).toEqual([0, 1]);
    expect(cache.stats).toEqual({ used: 3, pinned: 2 });
    // Full, with 'a' and 'b' pinned and 'c' pending: nothing can go.
    expect(cache.reserve('d')).toBe(3);
    expect(cache.reserve('e')).toBeNull();
    cache.discard([c!, 3]);
    expect(cache.stats).toEqual({ used: 2, pinned: 2 });
    cache.unpin([0, 1]);
    expect(() => cache.unpin([0])).toThrow('not pinned');
    expect(cache.stats).toEqual({ used: 2, pinned: 0 });
  });

  it('evicts the least recently used unpinned block, a chain from its tail', () => {
    const cache = new PrefixCache(3);
    const chain = ['a0', 'a1', 'a2'].map((k) => cache.reserve(k) as number);
    cache.commit(chain);
    // a0 is the most recently used, a2 the least.
    expect(cache.reserve('b0')).toBe(chain[2]);
    cache.commit([chain[2]!]);
    expect(cache.match(['a0', 'a1', 'a2'])).toEqual([chain[0], chain[1]]);
    // a0 and a1 pinned: b0 is the only evictable block.
    expect(cache.reserve('c0')).toBe(chain[2]);
    expect(cache.reserve('c1')).toBeNull();
    cache.unpin([chain[0]!, chain[1]!]);
    cache.touch(['a0', 'a1']);
    // c0 is pending; of a0 and a1, the tail goes.
    expect(cache.reserve('d0')).toBe(chain[1]);
    expect(cache.match(['a0', 'a1'])).toEqual([chain[0]]);
  });

  it('is off with no blocks', () => {
    const cache = new PrefixCache(0);
    expect(cache.enabled).toBe(false);
    expect(cache.reserve('a')).toBeNull();
    expect(cache.match(['a'])).toEqual([]);
  });
});

describe('BlockKeys', () => {
  const IMAGE = 9;
  const tokens = (n: number) => Array.from({ length: n }, (_, i) => 1 + (i % 7));

  it('chains: equal keys for equal prefixes only, block by block', () => {
    const a = new BlockKeys(tokens(48), 48, [], IMAGE);
    const b = [...tokens(48)];
    b[20] = 8;
    const other = new BlockKeys(b, 48, [], IMAGE);
    expect(a.keys(3)).toHaveLength(3);
    expect(other.key(0)).toBe(a.key(0));
    expect(other.key(1)).not.toBe(a.key(1));
    expect(other.key(2)).not.toBe(a.key(2)); // the same ids, after a different block
    expect(() => a.key(3)).toThrow('block 3 is not full');
    // A sequence grows as it generates: its later blocks can be keyed then.
    const growing = tokens(20);
    const keys = new BlockKeys(growing, 20, [], IMAGE);
    growing.push(...tokens(48).slice(20, 32));
    expect(keys.key(1)).toBe(a.key(1));
  });

  it("hashes each image token's image and row, not just its id", () => {
    const prompt = tokens(48);
    for (let p = 10; p < 40; p++) prompt[p] = IMAGE;
    const keys = (images: Array<{ rows: number; key: string }>) =>
      new BlockKeys(prompt, 48, images, IMAGE).keys(3);
    const one = keys([{ rows: 30, key: 'x' }]);
    expect(keys([{ rows: 30, key: 'x' }])).toEqual(one);
    const other = keys([{ rows: 30, key: 'y' }]);
    expect(other.filter((k, i) => k === one[i])).toEqual([]);
    // Two images splitting the run differently: the first block (rows 0 .. 5 of the first
    // image either way) matches, the next does not.
    const split = keys([
      { rows: 10, key: 'x' },
      { rows: 20, key: 'z' },
    ]);
    const splitOther = keys([
      { rows: 20, key: 'x' },
      { rows: 10, key: 'z' },
    ]);
    expect(split[0]).toBe(splitOther[0]);
    expect(split[1]).not.toBe(splitOther[1]);
  });
});
