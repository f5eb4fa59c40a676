// `npm start` / `loupe start`: the local stack comes up, serves, and Ctrl-C stops it cleanly.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../proto/gen/grpc/health/v1/health.js';
import { checkHealth, healthClient } from './helpers/grpc.js';
import { repoRoot } from './helpers/service-process.js';

describe('loupe start', () => {
  it('starts every existing service, prints where they are, and stops them all on SIGINT', async () => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), 'start'], {
      cwd: repoRoot,
      env: { ...process.env, LOUPE_PREPROCESSOR_PORT: '0', LOUPE_PREPROCESSOR_METRICS_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const output: string[] = [];
    const exited = new Promise<number | null>((resolve) =>
      child.once('exit', (code) => resolve(code)),
    );
    createInterface({ input: child.stderr }).on('line', (line) => output.push(line));
    const address = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout }).on('line', (line) => {
        output.push(line);
        const match = /preprocessor\s+gRPC (127\.0\.0\.1:\d+)/.exec(line);
        if (match) resolve(match[1]!);
      });
      void exited.then((code) =>
        reject(new Error(`loupe start exited (${code}):\n${output.join('\n')}`)),
      );
    });
    await new Promise<void>((resolve) => {
      const check = () =>
        output.some((l) => l.includes('Ctrl-C stops everything'))
          ? resolve()
          : setTimeout(check, 10);
      check();
    });
    expect(
      output.some((line) => line.startsWith('preprocessor') && line.includes('"event":"ready"')),
    ).toBe(true);

    const health = healthClient(address);
    expect((await checkHealth(health)).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    health.close();

    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(output.join('\n')).toMatch(/preprocessor stopped/);
    expect(output.join('\n')).toMatch(/loupe: stopped/);
  });
});
