// Starts a real service process for a test and waits for its readiness line (never a sleep).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export interface ServiceProcess {
  child: ChildProcess;
  grpcPort: number;
  metricsPort: number;
  grpcAddress: string;
  /** Every stdout/stderr line so far. */
  lines: string[];
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
  /** Resolves with the first parsed JSON log line that matches. */
  waitForLog(
    match: (event: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
}

/** Every process started here and not yet stopped, so a failing test cannot leak one. */
const running = new Set<ServiceProcess>();

/** Stops every process this file's tests started and did not stop (call in afterEach). */
export async function stopServiceProcesses(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop(5_000)));
}

/** Path of a compiled service entry point, e.g. builtService('preprocessor'). */
export function builtService(name: string): string {
  const script = join(repoRoot, 'dist', 'services', name, 'main.js');
  if (!existsSync(script))
    throw new Error(`${script} is missing: run \`npm run build\` first (npm test does)`);
  return script;
}

export async function startServiceProcess(
  script: string,
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<ServiceProcess> {
  const child = spawn(process.execPath, [script], {
    // Reflection is off by default in the services; the tests list services through it.
    env: { ...process.env, LOUPE_LOG_LEVEL: 'info', LOUPE_GRPC_REFLECTION: 'true', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const listeners = new Set<(event: Record<string, unknown>) => void>();
  const onLine = (line: string) => {
    lines.push(line);
    if (!line.startsWith('{')) return;
    let event: Record<string, unknown>;
    try {
      event = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    for (const listener of listeners) listener(event);
  };
  createInterface({ input: child.stdout! }).on('line', onLine);
  createInterface({ input: child.stderr! }).on('line', onLine);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  let started: ServiceProcess | undefined;

  const waitForLog = (match: (event: Record<string, unknown>) => boolean, waitMs = timeoutMs) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      for (const line of lines) {
        try {
          const event = JSON.parse(line) as Record<string, unknown>;
          if (match(event)) return resolve(event);
        } catch {
          // not JSON
        }
      }
      const timer = setTimeout(() => {
        listeners.delete(listener);
        reject(new Error(`no matching log line within ${waitMs} ms; output:\n${lines.join('\n')}`));
      }, waitMs);
      const listener = (event: Record<string, unknown>) => {
        if (!match(event)) return;
        clearTimeout(timer);
        listeners.delete(listener);
        resolve(event);
      };
      listeners.add(listener);
      void exited.then((code) => {
        if (!listeners.has(listener)) return;
        clearTimeout(timer);
        listeners.delete(listener);
        reject(new Error(`process exited with code ${code} first; output:\n${lines.join('\n')}`));
      });
    });

  const stop = async (graceMs = 30_000) => {
    if (started) running.delete(started);
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };

  try {
    const ready = await waitForLog((event) => event.event === 'ready');
    const grpcPort = Number(ready.grpcPort);
    const service: ServiceProcess = {
      child,
      grpcPort,
      metricsPort: Number(ready.metricsPort),
      grpcAddress: `127.0.0.1:${grpcPort}`,
      lines,
      exited,
      stop,
      waitForLog,
    };
    started = service;
    running.add(service);
    return service;
  } catch (error) {
    await stop(1000);
    throw error;
  }
}

/** Environment that puts a service on ephemeral loopback ports. */
export function ephemeralPorts(prefix: string): Record<string, string> {
  return {
    [`LOUPE_${prefix}_HOST`]: '127.0.0.1',
    [`LOUPE_${prefix}_PORT`]: '0',
    [`LOUPE_${prefix}_METRICS_PORT`]: '0',
  };
}
