// For benchmarks: a service started as its own process (`dist/services/<name>/main.js`),
// resolved with the fields of its `ready` log line once it serves.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { packageRoot } from '../../services/runtime/paths.js';

export interface BenchService {
  /** The ready line's fields: grpcPort, metricsPort, httpPort, ... */
  ready: Record<string, unknown>;
  stop(): Promise<void>;
}

/**
 * Starts `dist/services/<name>/main.js`; with `cpus` (a taskset list, e.g. "0" or "0-3") the
 * process and every thread it makes run on those CPUs only.
 */
export async function startBenchService(
  name: string,
  env: Record<string, string>,
  { cpus }: { cpus?: string } = {},
): Promise<BenchService> {
  const main = join(packageRoot(), 'dist', 'services', name, 'main.js');
  const child = spawn(
    cpus === undefined ? process.execPath : 'taskset',
    cpus === undefined ? [main] : ['-c', cpus, process.execPath, main],
    {
      // The ready line is logged at info level.
      env: { ...process.env, ...env, LOUPE_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      try {
        const event = JSON.parse(line) as Record<string, unknown>;
        if (event.event === 'ready') resolve(event);
      } catch {
        // not JSON
      }
    });
    void exited.then(() => reject(new Error(`the ${name} exited before it was ready`)));
  });
  return {
    ready,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}
