// The gateway's budget of bytes in flight: every request reserves what it may hold in memory
// before that memory is committed, so many large bodies at once are refused with a 429
// instead of growing the process until the kernel kills it.
import { totalmem } from 'node:os';
import { containerMemoryLimit } from '../runtime/cgroup.js';

/**
 * A body costs about three times its size while a request runs: the raw bytes, the parsed
 * JSON's strings, and the images decoded from base64 data URLs.
 */
export const BODY_COST_FACTOR = 3;

export { containerMemoryLimit } from '../runtime/cgroup.js';

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
