// Admission: API keys compared in constant time, per-key request and token rates over a
// sliding minute, and a global bound on requests in flight.
import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (s: string) => createHash('sha256').update(s).digest();

export class ApiKeys {
  readonly #digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.#digests = keys.map(digest);
  }

  get enabled(): boolean {
    return this.#digests.length > 0;
  }

  /** Whether `key` is one of the keys; every key is compared, in constant time each. */
  check(key: string | undefined): boolean {
    if (key === undefined) return false;
    const d = digest(key);
    let ok = false;
    for (const k of this.#digests) ok = timingSafeEqual(k, d) || ok;
    return ok;
  }
}

/** Counts per key over a sliding minute (this minute plus the share of the last one still in it). */
export class MinuteRate {
  readonly #windows = new Map<string, { start: number; current: number; previous: number }>();

  constructor(
    /** Per minute; 0 = unlimited. */
    readonly limit: number,
    private readonly now: () => number = Date.now,
  ) {}

  #swept = 0;

  #window(key: string) {
    const t = this.now();
    const start = Math.floor(t / 60_000) * 60_000;
    // Forget keys idle for two minutes, once a minute.
    if (start !== this.#swept) {
      this.#swept = start;
      for (const [k, w] of this.#windows) if (start - w.start >= 120_000) this.#windows.delete(k);
    }
    let w = this.#windows.get(key);
    if (!w || start - w.start >= 120_000) w = { start, current: 0, previous: 0 };
    else if (start !== w.start) w = { start, current: 0, previous: w.current };
    this.#windows.set(key, w);
    const weight = 1 - (t - start) / 60_000;
    return { w, used: w.previous * weight + w.current, t, start };
  }

  /** Seconds to wait before `key` may use more, or 0 when it may now. */
  retryAfter(key: string): number {
    if (this.limit === 0) return 0;
    const { used, t, start } = this.#window(key);
    return used >= this.limit ? Math.max(1, Math.ceil((start + 60_000 - t) / 1000)) : 0;
  }

  add(key: string, amount: number): void {
    if (this.limit === 0) return;
    this.#window(key).w.current += amount;
  }
}
