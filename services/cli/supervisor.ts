// Runs several services as child processes: prefixed logs, waits for each one's readiness
// line, restarts one that dies (as a kubelet would: exponential backoff, a limit, on the same
// ports), and stops them all (SIGTERM, then SIGKILL after a grace period) together.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface ChildSpec {
  name: string;
  /** Node script to run. */
  script: string;
  env: Record<string, string>;
  /**
   * The environment a restart adds, from the first start's ready line: the ports it got, so
   * whoever was pointed at it finds it again.
   */
  restartEnv?: (ready: ReadyInfo) => Record<string, string>;
}

export interface ReadyInfo {
  grpcPort?: number;
  metricsPort?: number;
  httpPort?: number;
  [key: string]: unknown;
}

export interface RestartPolicy {
  /** Wait before the first restart, ms; doubled for each restart after. */
  initialDelayMs: number;
  maxDelayMs: number;
  /** Restarts allowed within `windowMs`; one more and the stack stops. */
  maxRestarts: number;
  windowMs: number;
}

export const DEFAULT_RESTART: RestartPolicy = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  maxRestarts: 5,
  windowMs: 10 * 60_000,
};

interface Running {
  spec: ChildSpec;
  child: ChildProcess;
  exited: Promise<number | null>;
  /** When it was restarted, within the policy's window. */
  restarts: number[];
}

const COLORS = [36, 35, 33, 32, 34, 31];

export class Supervisor {
  private readonly running: Running[] = [];
  private stopping = false;
  readonly #pendingRestarts = new Set<NodeJS.Timeout>();

  constructor(
    private readonly options: {
      color: boolean;
      restart?: RestartPolicy;
      /** A child died and will not be restarted (no policy, or over its limit). */
      onGiveUp: (name: string, reason: string) => void;
      log?: (line: string) => void;
    },
  ) {}

  /** Starts a child and resolves with its ready line's fields; rejects if it exits first. */
  start(spec: ChildSpec, timeoutMs = 120_000): Promise<ReadyInfo> {
    const entry: Running = {
      spec,
      child: undefined as never,
      exited: Promise.resolve(null),
      restarts: [],
    };
    this.running.push(entry);
    return this.#launch(entry, this.running.length - 1, spec.env, timeoutMs);
  }

  #launch(
    entry: Running,
    index: number,
    env: Record<string, string>,
    timeoutMs: number,
  ): Promise<ReadyInfo> {
    const { spec } = entry;
    const child = spawn(process.execPath, [spec.script], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group: a terminal's Ctrl-C reaches only the supervisor, which then
      // stops each child once, in order.
      detached: true,
    });
    process.once('exit', () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const prefix = this.options.color
      ? `\x1b[${COLORS[index % COLORS.length]}m${spec.name.padEnd(12)}|\x1b[0m `
      : `${spec.name.padEnd(12)}| `;
    const exited = new Promise<number | null>((resolve) =>
      child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))),
    );
    entry.child = child;
    entry.exited = exited;

    return new Promise<ReadyInfo>((resolve, reject) => {
      let ready: ReadyInfo | undefined;
      const timer = setTimeout(() => {
        reject(new Error(`${spec.name} was not ready within ${timeoutMs} ms`));
        child.kill('SIGKILL');
      }, timeoutMs);
      const onLine = (line: string) => {
        process.stdout.write(prefix + line + '\n');
        if (ready || !line.startsWith('{')) return;
        try {
          const event = JSON.parse(line) as { event?: string } & ReadyInfo;
          if (event.event === 'ready') {
            ready = event;
            clearTimeout(timer);
            resolve(event);
          }
        } catch {
          // not a JSON log line
        }
      };
      createInterface({ input: child.stdout! }).on('line', onLine);
      createInterface({ input: child.stderr! }).on('line', (line) =>
        process.stderr.write(prefix + line + '\n'),
      );
      void exited.then((code) => {
        clearTimeout(timer);
        if (this.stopping) return;
        const how = child.signalCode ? `signal ${child.signalCode}` : `code ${code}`;
        if (!ready) {
          reject(new Error(`${spec.name} exited with ${how} before it was ready`));
          return;
        }
        this.#restart(entry, index, ready, how, timeoutMs);
      });
    });
  }

  /** A child that was ready died: start it again after its backoff, or give up. */
  #restart(entry: Running, index: number, ready: ReadyInfo, how: string, timeoutMs: number) {
    const policy = this.options.restart;
    const { name } = entry.spec;
    if (!policy) {
      this.options.onGiveUp(name, `exited unexpectedly (${how})`);
      return;
    }
    const now = Date.now();
    entry.restarts = entry.restarts.filter((t) => now - t < policy.windowMs);
    if (entry.restarts.length >= policy.maxRestarts) {
      this.options.onGiveUp(
        name,
        `exited unexpectedly (${how}) after ${entry.restarts.length} restarts within ${policy.windowMs / 1000} s`,
      );
      return;
    }
    const delay = Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** entry.restarts.length);
    entry.restarts.push(now);
    this.#log(
      `loupe start: ${name} exited unexpectedly (${how}); restarting in ${(delay / 1000).toFixed(1)} s (restart ${entry.restarts.length} of at most ${policy.maxRestarts} within ${policy.windowMs / 1000} s)`,
    );
    const env = { ...entry.spec.env, ...(entry.spec.restartEnv?.(ready) ?? {}) };
    const timer = setTimeout(() => {
      this.#pendingRestarts.delete(timer);
      if (this.stopping) return;
      // A restart that fails before its ready line counts as one more death, with backoff.
      this.#launch(entry, index, env, timeoutMs).then(
        () => this.#log(`loupe start: ${name} is back`),
        (error: Error) => this.#restart(entry, index, ready, error.message, timeoutMs),
      );
    }, delay);
    this.#pendingRestarts.add(timer);
  }

  #log(line: string): void {
    (this.options.log ?? ((l: string) => process.stderr.write(`${l}\n`)))(line);
  }

  /** SIGTERM to every child (in reverse start order), SIGKILL to any still alive after graceMs. */
  async stopAll(graceMs: number): Promise<void> {
    this.stopping = true;
    for (const timer of this.#pendingRestarts) clearTimeout(timer);
    this.#pendingRestarts.clear();
    for (const { child } of [...this.running].reverse())
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => {
      for (const { child } of this.running)
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }, graceMs);
    await Promise.all(this.running.map((r) => r.exited));
    clearTimeout(timer);
  }
}
