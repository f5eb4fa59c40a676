// The stages' health as this gateway last saw it: polled in the background and on demand
// (at most once a second), so /readyz answers at once and never waits on a stuck stage. The
// gateway's own readiness does not depend on it — a gateway whose decoder is down still
// answers (503s with Retry-After), and taking every gateway out of its Service would only turn
// those into connection errors (docs/gateway.md).
import type { StageClient } from './stage-client.js';

export class StageHealth {
  #last: Record<string, boolean> = { preprocessor: false, encoder: false, decoder: false };
  #at = 0;
  #polling: Promise<Record<string, boolean>> | undefined;
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly stages: Pick<StageClient, 'ready'>,
    private readonly o: { intervalMs?: number; timeoutMs?: number } = {},
  ) {
    this.#timer = setInterval(() => void this.poll(), o.intervalMs ?? 5000);
    this.#timer.unref();
  }

  /** The last result, without waiting. */
  get last(): Readonly<Record<string, boolean>> {
    return this.#last;
  }

  /** The stages' health at most a second old; one poll at a time. */
  async current(): Promise<Record<string, boolean>> {
    if (Date.now() - this.#at < 1000) return this.#last;
    return this.poll();
  }

  poll(): Promise<Record<string, boolean>> {
    this.#polling ??= this.stages
      .ready(this.o.timeoutMs ?? 500)
      .then((health) => {
        this.#last = health;
        this.#at = Date.now();
        return health;
      })
      .finally(() => (this.#polling = undefined));
    return this.#polling;
  }

  close(): void {
    clearInterval(this.#timer);
  }
}
