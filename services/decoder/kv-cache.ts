// Who holds which KV slot: the scheduler's bookkeeping. The memory itself belongs to the model
// runner (model-runner.ts; ort-runner.ts holds one buffer per layer and kind, [slots, kv heads,
// context, head dim]); a sequence owns one slot from admission to its end, so a running
// sequence never runs out of room and nothing is ever preempted. Slots are handed
// out lowest first, which keeps the running ones packed at the front: a decode step covers
// slots 0 .. highest, one contiguous view of each buffer.

export class SlotKvCache {
  readonly #lengths: Int32Array; // tokens held per slot; -1 = free
  #used = 0;
  #tokens = 0;

  constructor(
    readonly slots: number,
    /** Tokens one slot holds (the maximum context). */
    readonly context: number,
  ) {
    if (!Number.isSafeInteger(slots) || slots < 1)
      throw new RangeError(`slots must be >= 1, got ${slots}`);
    if (!Number.isSafeInteger(context) || context < 1)
      throw new RangeError(`context must be >= 1, got ${context}`);
    this.#lengths = new Int32Array(slots).fill(-1);
  }

  /** A free slot for a sequence of up to `tokens` tokens, or null when none is free. */
  allocate(tokens: number): number | null {
    if (tokens > this.context) {
      throw new RangeError(
        `a sequence of ${tokens} tokens does not fit a ${this.context}-token slot`,
      );
    }
    const slot = this.#lengths.indexOf(-1);
    if (slot < 0) return null;
    this.#lengths[slot] = 0;
    this.#used++;
    return slot;
  }

  /** Records that `slot` now holds `tokens` tokens. */
  setLength(slot: number, tokens: number): void {
    const old = this.#lengths[slot]!;
    if (old < 0) throw new Error(`slot ${slot} is not allocated`);
    if (tokens > this.context)
      throw new RangeError(`slot ${slot}: ${tokens} tokens exceed ${this.context}`);
    this.#tokens += tokens - old;
    this.#lengths[slot] = tokens;
  }

  length(slot: number): number {
    return this.#lengths[slot]!;
  }

  release(slot: number): void {
    const old = this.#lengths[slot]!;
    if (old < 0) throw new Error(`slot ${slot} is not allocated`);
    this.#tokens -= old;
    this.#lengths[slot] = -1;
    this.#used--;
  }

  get usedSlots(): number {
    return this.#used;
  }

  /** The longest sequence held, tokens (0 when none). */
  get longest(): number {
    let longest = 0;
    for (const length of this.#lengths) longest = Math.max(longest, length);
    return longest;
  }

  /** Index of the highest allocated slot, -1 when none. */
  get highest(): number {
    for (let s = this.slots - 1; s >= 0; s--) if (this.#lengths[s]! >= 0) return s;
    return -1;
  }

  /**
   * Share of the cache reserved by sequences, [0, 1]: memory is reserved a slot at a time,
   * so this is what admission sees (the kv_cache_usage the gateway routes on).
   */
  get usage(): number {
    return this.#used / this.slots;
  }

  /** Share of the cache's token capacity actually holding tokens, [0, 1]. */
  get tokenUsage(): number {
    return this.#tokens / (this.slots * this.context);
  }
}
