// Runs several services as child processes: prefixed logs, waits for each one's readiness
// line, and stops them all (SIGTERM, then SIGKILL after a grace period) together.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface ChildSpec {
  name: string;
  /** Node script to run. */
  script: string;
  env: Record<string, string>;
}

export interface ReadyInfo {
  grpcPort?: number;
  metricsPort?: number;
  httpPort?: number;
  [key: string]: unknown;
}

interface Running {
  spec: ChildSpec;
  child: ChildProcess;
  exited: Promise<number | null>;
}

const COLORS = [36, 35, 33, 32, 34, 31];

export class Supervisor {
  private readonly running: Running[] = [];
  private stopping = false;

  constructor(
    private readonly options: {
      color: boolean;
      onUnexpectedExit: (name: string, code: number | null) => void;
    },
  ) {}

  /** Starts a child and resolves with its ready line's fields; rejects if it exits first. */
  start(spec: ChildSpec, timeoutMs = 120_000): Promise<ReadyInfo> {
    const index = this.running.length;
    const child = spawn(process.execPath, [spec.script], {
      env: { ...process.env, ...spec.env },
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
      child.once('exit', (code) => resolve(code)),
    );
    this.running.push({ spec, child, exited });

    return new Promise<ReadyInfo>((resolve, reject) => {
      let ready = false;
      const timer = setTimeout(
        () => reject(new Error(`${spec.name} was not ready within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const onLine = (line: string) => {
        process.stdout.write(prefix + line + '\n');
        if (ready || !line.startsWith('{')) return;
        try {
          const event = JSON.parse(line) as { event?: string } & ReadyInfo;
          if (event.event === 'ready') {
            ready = true;
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
        if (!ready) reject(new Error(`${spec.name} exited with code ${code} before it was ready`));
        else if (!this.stopping) this.options.onUnexpectedExit(spec.name, code);
      });
    });
  }

  /** SIGTERM to every child (in reverse start order), SIGKILL to any still alive after graceMs. */
  async stopAll(graceMs: number): Promise<void> {
    this.stopping = true;
    for (const { child } of [...this.running].reverse())
      if (child.exitCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => {
      for (const { child } of this.running) if (child.exitCode === null) child.kill('SIGKILL');
    }, graceMs);
    await Promise.all(this.running.map((r) => r.exited));
    clearTimeout(timer);
  }
}
