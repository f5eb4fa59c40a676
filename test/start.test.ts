// `npm start` / `loupe start`: the local stack comes up, serves, and Ctrl-C stops it cleanly.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../proto/gen/grpc/health/v1/health.js';
import { checkHealth, healthClient } from './helpers/grpc.js';
import { repoRoot } from './helpers/service-process.js';

describe('loupe start', () => {
  let child: ChildProcess | undefined;
  // If the test fails midway, stop the stack the way a person would (Ctrl-C), so its
  // services (in their own process group) do not outlive the test.
  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGINT');
      await gone;
    }
  });

  it('starts every existing service, prints where they are, and stops them all on SIGINT', async () => {
    const stack = spawn(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), 'start'], {
      cwd: repoRoot,
      env: {
        ...process.env,
        LOUPE_PREPROCESSOR_PORT: '0',
        LOUPE_PREPROCESSOR_METRICS_PORT: '0',
        LOUPE_ENCODER_PORT: '0',
        LOUPE_ENCODER_METRICS_PORT: '0',
        LOUPE_DECODER_PORT: '0',
        LOUPE_DECODER_METRICS_PORT: '0',
        LOUPE_GATEWAY_PORT: '0',
        LOUPE_GATEWAY_METRICS_PORT: '0',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = stack;
    const output: string[] = [];
    const exited = new Promise<number | null>((resolve) =>
      stack.once('exit', (code) => resolve(code)),
    );
    createInterface({ input: stack.stderr }).on('line', (line) => output.push(line));
    const addresses: Record<string, string> = {};
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: stack.stdout }).on('line', (line) => {
        output.push(line);
        const match = /^\s+(preprocessor|encoder|decoder)\s+gRPC (127\.0\.0\.1:\d+)/.exec(line);
        if (match) addresses[match[1]!] = match[2]!;
        const http = /^\s+gateway\s+HTTP (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(line);
        if (http) addresses.gateway = http[1]!;
        if (line.includes('Ctrl-C stops everything')) resolve();
      });
      void exited.then((code) =>
        reject(new Error(`loupe start exited (${code}):\n${output.join('\n')}`)),
      );
    });
    // The summary comes after every service's lines.
    await new Promise<void>((resolve) => {
      const check = () => (Object.keys(addresses).length === 4 ? resolve() : setTimeout(check, 10));
      check();
    });
    for (const [name, service] of [
      ['preprocessor', 'loupe.v1.Preprocessor'],
      ['encoder', 'loupe.v1.Encoder'],
      ['decoder', 'loupe.v1.Decoder'],
    ] as const) {
      expect(output.some((line) => line.startsWith(name) && line.includes('"event":"ready"'))).toBe(
        true,
      );
      const health = healthClient(addresses[name]!);
      expect((await checkHealth(health, service)).status).toBe(
        HealthCheckResponse_ServingStatus.SERVING,
      );
      health.close();
    }

    const chat = await fetch(`${addresses.gateway}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'tiny-seed0',
        max_tokens: 4,
        messages: [{ role: 'user', content: 'Hello!' }],
      }),
    });
    expect(chat.status).toBe(200);
    expect(output.join('\n')).toMatch(/curl http:\/\/127\.0\.0\.1:\d+\/v1\/chat\/completions/);

    stack.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(output.join('\n')).toMatch(/preprocessor stopped/);
    expect(output.join('\n')).toMatch(/encoder stopped/);
    expect(output.join('\n')).toMatch(/decoder stopped/);
    expect(output.join('\n')).toMatch(/gateway stopped/);
    expect(output.join('\n')).toMatch(/loupe: stopped/);
  });
});
