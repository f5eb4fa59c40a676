// The gateway's budget of bytes in flight: every request reserves what it may hold in memory
// before that memory is committed, so many large bodies at once are refused with a 429
// instead of growing the process until the kernel kills it.
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';

/**
 * A body costs about three times its size while a request runs: the raw bytes, the parsed
 * JSON's strings, and the images decoded from base64 data URLs.
 */
export const BODY_COST_FACTOR = 3;

/** The container's memory limit (cgroup v2, then v1), or undefined when there is none. */
export function containerMemoryLimit(): number | undefined {
  for (const [file, unlimited] of [
    ['/sys/fs/cgroup/memory.max', (s: string) => s === 'max'],
    ['/sys/fs/cgroup/memory/memory.limit_in_bytes', (s: string) => Number(s) >= 2 ** 60],
  ] as const) {
    try {
      const text = readFileSync(file, 'utf8').trim();
      if (unlimited(text)) return undefined;
      const bytes = Number(text);
      if (Number.isSafeInteger(bytes) && bytes > 0) return bytes;
    } catch {
      // not this cgroup version
    }
  }
  return undefined;
}

/** The default budget: half the container's memory limit, else a quarter of the machine's. */
export function defaultMemoryBudget(): number {
  const limit = containerMemoryLimit();
  return Math.floor(limit !== undefined ? limit / 2 : totalmem() / 4);
}

export class MemoryBudget {
  #used = 0;
  constructor(readonly limit: number) {}

  get used(): number {
    return this.#used;
  }

  /** Reserves `bytes`; returns the release (idempotent), or undefined when they do not fit. */
  reserve(bytes: number): (() => void) | undefined {
    if (this.#used + bytes > this.limit) return undefined;
    this.#used += bytes;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#used -= bytes;
    };
  }
}
