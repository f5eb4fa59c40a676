// Which prefix-cache block holds which KV (docs/decoder-engine.md, "The prefix cache"): the
// engine's bookkeeping over the runner's pool of blocks, by block key (block-keys.ts).
//
// A block is free, pending (being saved by the step in flight: not matchable yet, not
// evictable), or cached. A cached block is pinned while a step loads it into a slot, and
// evictable otherwise: when a save needs a block and none is free, the least recently used
// evictable block goes. A chain is touched last block first, so when a prefix ages out its
// tail goes before its head (a head without its tail still hits; a tail without its head
// never can); the engine touches a sequence's whole chain whenever it saves to it.

export interface PrefixCacheStats {
  /** Blocks holding KV (cached or pending). */
  used: number;
  /** Blocks a step is loading from. */
  pinned: number;
}

interface Block {
  key: string | undefined;
  pending: boolean;
  /** Steps loading it now. */
  pins: number;
}

export class PrefixCache {
  readonly #blocks: Block[];
  readonly #byKey = new Map<string, number>();
  /** Cached, unpinned blocks, least recently used first. */
  readonly #evictable = new Set<number>();
  readonly #free: number[];

  constructor(readonly capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 0)
      throw new RangeError(`capacity must be >= 0 blocks, got ${capacity}`);
    this.#blocks = Array.from({ length: capacity }, () => ({
      key: undefined,
      pending: false,
      pins: 0,
    }));
    // Lowest first (pop from the end).
    this.#free = Array.from({ length: capacity }, (_, i) => capacity - 1 - i);
  }

  get enabled(): boolean {
    return this.capacity > 0;
  }

  /**
   * The cached blocks of the longest prefix of `keys` (block ids, in order), pinned: they
   * stay until unpin() however full the cache gets.
   */
  match(keys: readonly string[]): number[] {
    const found: number[] = [];
    for (const key of keys) {
      const id = this.#byKey.get(key);
      if (id === undefined || this.#blocks[id]!.pending) break;
      found.push(id);
    }
    for (const id of found) {
      this.#blocks[id]!.pins++;
      this.#evictable.delete(id);
    }
    return found;
  }

  unpin(ids: readonly number[]): void {
    for (let i = ids.length - 1; i >= 0; i--) {
      const id = ids[i]!;
      const block = this.#blocks[id]!;
      if (block.pins <= 0) throw new Error(`prefix-cache block ${id} is not pinned`);
      if (--block.pins === 0 && block.key !== undefined) this.#touch(id);
    }
  }

  /**
   * A block to save the KV of `key` into, pending until commit() or discard(); `cached` when
   * `key` is cached or pending already (a cached one counts as used now); null when no block
   * is free or evictable.
   */
  reserve(key: string): number | 'cached' | null {
    const known = this.#byKey.get(key);
    if (known !== undefined) {
      if (this.#evictable.has(known)) this.#touch(known);
      return 'cached';
    }
    let id = this.#free.pop();
    if (id === undefined) {
      const lru = this.#evictable.values().next();
      if (lru.done) return null;
      id = lru.value;
      this.#evictable.delete(id);
      this.#byKey.delete(this.#blocks[id]!.key!);
    }
    const block = this.#blocks[id]!;
    block.key = key;
    block.pending = true;
    this.#byKey.set(key, id);
    return id;
  }

  /** Saved: the blocks are cached now (pass a chain in order; its head stays longest). */
  commit(ids: readonly number[]): void {
    for (let i = ids.length - 1; i >= 0; i--) {
      const block = this.#blocks[ids[i]!]!;
      block.pending = false;
      if (block.pins === 0) this.#touch(ids[i]!);
    }
  }

  /**
   * Marks the cached blocks of a chain (keys in order) most recently used, its head last: so
   * the chain ages out from its tail, whichever steps saved its blocks.
   */
  touch(keys: readonly string[]): void {
    for (let i = keys.length - 1; i >= 0; i--) {
      const id = this.#byKey.get(keys[i]!);
      if (id !== undefined && this.#evictable.has(id)) this.#touch(id);
    }
  }

  /** Not saved (the step failed): the blocks are free again. */
  discard(ids: readonly number[]): void {
    for (const id of ids) {
      const block = this.#blocks[id]!;
      this.#byKey.delete(block.key!);
      block.key = undefined;
      block.pending = false;
      this.#evictable.delete(id);
      this.#free.push(id);
    }
  }

  get stats(): PrefixCacheStats {
    let pinned = 0;
    for (const b of this.#blocks) if (b.pins > 0) pinned++;
    return { used: this.capacity - this.#free.length, pinned };
  }

  /** Most recently used now. */
  #touch(id: number): void {
    this.#evictable.delete(id);
    this.#evictable.add(id);
  }
}
