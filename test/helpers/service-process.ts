// Starts real processes for tests (a service, `loupe start`, Prometheus) and waits for each
// one's readiness line, never a sleep. Every process started here is stopped by
// stopServiceProcesses() (call it in afterEach or afterAll), killed if its start fails, and
// killed when the test worker exits, so a failing test cannot leak one.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

/** A process started by startProcess, and what it printed. */
export interface StartedProcess {
  child: ChildProcess;
  /** Every stdout/stderr line so far. */
  lines: string[];
  /** Resolves with the exit code (null if a signal ended it). */
  exited: Promise<number | null>;
  /** The stop signal (SIGTERM unless told), then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
  /**
   * Resolves with the first line, already printed or to come, that matches; rejects after
   * `timeoutMs`, or if the process exits (its output closed) first.
   */
  waitForLine(match: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  /** Resolves with the first parsed JSON log line that matches (as waitForLine). */
  waitForLog(
    match: (event: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
}

export interface ProcessOptions {
  args?: string[];
  /** Over this process's environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** The readiness signal: startProcess resolves once a line satisfies it. */
  ready: (line: string) => boolean;
  /** For the readiness line, and the default of waitForLine/waitForLog. */
  timeoutMs?: number;
  /** What stop() sends first (`loupe start` stops on SIGINT, as on Ctrl-C). */
  stopSignal?: NodeJS.Signals;
}

/** Every process started here and not yet stopped. */
const running = new Set<StartedProcess>();
// The last resort, when a test file ends without stopping what it started.
process.once('exit', () => {
  for (const p of running) p.child.kill('SIGKILL');
});

/** Stops every process this file's tests started and did not stop (call in afterEach/afterAll). */
export async function stopServiceProcesses(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop(5_000)));
}

const parseJson = (line: string): Record<string, unknown> | undefined => {
  if (!line.startsWith('{')) return undefined;
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
};

/** Spawns `command` and resolves once its readiness line is printed (see ProcessOptions). */
export async function startProcess(
  command: string,
  { args = [], env = {}, cwd, ready, timeoutMs = 60_000, stopSignal = 'SIGTERM' }: ProcessOptions,
): Promise<StartedProcess> {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const listeners = new Set<(line: string) => void>();
  const onLine = (line: string) => {
    lines.push(line);
    for (const listener of listeners) listener(line);
  };
  createInterface({ input: child.stdout! }).on('line', onLine);
  createInterface({ input: child.stderr! }).on('line', onLine);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  // After the exit, once its output is read to the end (so an error names the last lines).
  const closed = new Promise<number | null>((resolve) => {
    child.once('close', (code) => resolve(code));
    // A process that never started (ENOENT) closes too; the error itself is not thrown.
    child.once('error', () => {});
  });

  const waitForLine = (match: (line: string) => boolean, waitMs = timeoutMs) =>
    new Promise<string>((resolve, reject) => {
      const seen = lines.find(match);
      if (seen !== undefined) return resolve(seen);
      const done = () => {
        clearTimeout(timer);
        listeners.delete(listener);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no matching log line within ${waitMs} ms; output:\n${lines.join('\n')}`));
      }, waitMs);
      const listener = (line: string) => {
        if (!match(line)) return;
        done();
        resolve(line);
      };
      listeners.add(listener);
      void closed.then((code) => {
        if (!listeners.has(listener)) return;
        done();
        reject(new Error(`process exited with code ${code} first; output:\n${lines.join('\n')}`));
      });
    });

  const waitForLog = async (
    match: (event: Record<string, unknown>) => boolean,
    waitMs = timeoutMs,
  ) =>
    parseJson(
      await waitForLine((line) => {
        const event = parseJson(line);
        return event !== undefined && match(event);
      }, waitMs),
    )!;

  const stop = async (graceMs = 30_000) => {
    running.delete(started);
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    child.kill(stopSignal);
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  const started: StartedProcess = { child, lines, exited, stop, waitForLine, waitForLog };
  running.add(started);
  try {
    await waitForLine(ready);
    return started;
  } catch (error) {
    await stop(1000);
    throw error;
  }
}

/** A service process (dist/services/<name>/main.js) and the ports its ready line names. */
export interface ServiceProcess extends StartedProcess {
  /** The ready line (`"event":"ready"`). */
  ready: Record<string, unknown>;
  grpcPort: number;
  metricsPort: number;
  /** 127.0.0.1:<grpcPort>. */
  grpcAddress: string;
  /** http://127.0.0.1:<metricsPort>/metrics. */
  metricsUrl: string;
  /** The gateway's HTTP port (NaN for a stage). */
  httpPort: number;
  /** http://127.0.0.1:<httpPort>, the gateway's API. */
  httpBase: string;
}

/** Path of a compiled service entry point, e.g. builtService('preprocessor'). */
export function builtService(name: string): string {
  const script = join(repoRoot, 'dist', 'services', name, 'main.js');
  if (!existsSync(script))
    throw new Error(`${script} is missing: run \`npm run build\` first (npm test does)`);
  return script;
}

/** Starts a service and resolves once it logs `"event":"ready"`; ports from that line. */
export async function startServiceProcess(
  script: string,
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<ServiceProcess> {
  const isReady = (line: string) => parseJson(line)?.event === 'ready';
  const p = await startProcess(process.execPath, {
    args: [script],
    // Reflection is off by default in the services; the tests list services through it.
    env: { LOUPE_LOG_LEVEL: 'info', LOUPE_GRPC_REFLECTION: 'true', ...env },
    ready: isReady,
    timeoutMs,
  });
  const ready = parseJson(p.lines.find(isReady)!)!;
  const grpcPort = Number(ready.grpcPort);
  const metricsPort = Number(ready.metricsPort);
  const httpPort = Number(ready.httpPort);
  return Object.assign(p, {
    ready,
    grpcPort,
    metricsPort,
    grpcAddress: `127.0.0.1:${grpcPort}`,
    metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`,
    httpPort,
    httpBase: `http://127.0.0.1:${httpPort}`,
  });
}

/** Environment that puts a service (PREPROCESSOR, ..., GATEWAY) on ephemeral loopback ports. */
export function ephemeralPorts(prefix: string): Record<string, string> {
  return {
    [`LOUPE_${prefix}_HOST`]: '127.0.0.1',
    [`LOUPE_${prefix}_PORT`]: '0',
    [`LOUPE_${prefix}_METRICS_PORT`]: '0',
  };
}

/**
 * Starts a gateway on ephemeral loopback ports in front of the given stage addresses (those
 * left out keep the gateway's defaults); `env` overrides.
 */
export function startGateway(
  modelDir: string,
  stages: { preprocessor?: string; encoder?: string; decoder?: string },
  env: Record<string, string> = {},
): Promise<ServiceProcess> {
  const endpoints = Object.fromEntries(
    Object.entries(stages)
      .filter(([, address]) => address !== undefined)
      .map(([stage, address]) => [`LOUPE_${stage.toUpperCase()}_ENDPOINTS`, address!]),
  );
  return startServiceProcess(builtService('gateway'), {
    ...ephemeralPorts('GATEWAY'),
    LOUPE_MODEL_DIR: modelDir,
    ...endpoints,
    ...env,
  });
}
