// The embedding cache: least recently used first out, bounded in bytes. Keys carry the model,
// the hash of the sub-images encoded, the split setting and the dtype of the stored bytes, so a
// repeated image costs no model time and a model change never serves stale rows.
//
// The hash in a key is always one the encoder computed itself (`subImagesHash`) over the very
// bytes it encoded: a caller's `content_hash` is only a claim, checked against it. So whoever
// looks a hash up gets what the model made of the sub-images with that hash, never what some
// caller chose to store under it.
import type { EmbeddingDtype } from './runner.js';

export interface CachedEmbeddings {
  /** [sub-images, tokens, hidden] row-major in `dtype`, ready for the wire. */
  data: Buffer;
  shape: [number, number, number];
  dtype: EmbeddingDtype;
}

export interface CacheKey {
  model: string;
  /** `subImagesHash` of the sub-images, as the encoder computed it. */
  contentHash: Uint8Array;
  split: boolean;
  dtype: EmbeddingDtype;
}

/** Bytes an entry is charged: its data plus a fixed allowance for the key and bookkeeping. */
const ENTRY_OVERHEAD = 256;

export class EmbeddingCache {
  readonly #entries = new Map<string, CachedEmbeddings>();
  #bytes = 0;

  constructor(
    readonly maxBytes: number,
    private readonly onEvict: () => void = () => {},
  ) {}

  static key({ model, contentHash, split, dtype }: CacheKey): string {
    return `${model}\n${Buffer.from(contentHash).toString('hex')}\n${split ? 1 : 0}\n${dtype}`;
  }

  get bytes(): number {
    return this.#bytes;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The entry, now the most recently used; undefined on a miss. */
  get(key: string): CachedEmbeddings | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    return entry;
  }

  /** Stores an entry, evicting the least recently used until it fits; too large: not stored. */
  set(key: string, entry: CachedEmbeddings): void {
    const cost = entry.data.byteLength + ENTRY_OVERHEAD;
    if (cost > this.maxBytes) return;
    const old = this.#entries.get(key);
    if (old !== undefined) {
      this.#entries.delete(key);
      this.#bytes -= old.data.byteLength + ENTRY_OVERHEAD;
    }
    for (const [oldest, value] of this.#entries) {
      if (this.#bytes + cost <= this.maxBytes) break;
      this.#entries.delete(oldest);
      this.#bytes -= value.data.byteLength + ENTRY_OVERHEAD;
      this.onEvict();
    }
    this.#entries.set(key, entry);
    this.#bytes += cost;
  }
}
