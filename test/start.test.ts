// `npm start` / `loupe start`: the local stack comes up, serves, and Ctrl-C stops it cleanly.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../proto/gen/grpc/health/v1/health.js';
import { checkHealth, healthClient } from './helpers/grpc.js';
import { fixturesDir } from './helpers/fixtures.js';
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
  it('restarts a stage killed under load: 503s with Retry-After only during the outage, then 200s', async () => {
    const stack = spawn(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), 'start'], {
      cwd: repoRoot,
      env: {
        ...process.env,
        ...Object.fromEntries(
          ['PREPROCESSOR', 'ENCODER', 'DECODER', 'GATEWAY'].flatMap((s) => [
            [`LOUPE_${s}_PORT`, '0'],
            [`LOUPE_${s}_METRICS_PORT`, '0'],
          ]),
        ),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = stack;
    const output: string[] = [];
    /** Each stage's ready lines, in order: the first start, then each restart. */
    const readies: Record<string, Array<{ pid: number }>> = {};
    let base = '';
    const exited = new Promise<number | null>((resolve) =>
      stack.once('exit', (code) => resolve(code)),
    );
    const onLine = (line: string) => {
      output.push(line);
      const ready = /^(preprocessor|encoder|decoder|gateway)\s*\| (\{.*"event":"ready".*\})$/.exec(
        line,
      );
      if (ready) (readies[ready[1]!] ??= []).push(JSON.parse(ready[2]!) as { pid: number });
      const http = /^\s+gateway\s+HTTP (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(line);
      if (http) base = http[1]!;
    };
    createInterface({ input: stack.stdout! }).on('line', onLine);
    createInterface({ input: stack.stderr! }).on('line', onLine);
    const until = async (what: string, ok: () => boolean, ms = 60_000) => {
      const deadline = Date.now() + ms;
      while (!ok()) {
        if (Date.now() > deadline || stack.exitCode !== null)
          throw new Error(`waiting for ${what}:\n${output.slice(-40).join('\n')}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    await until('the stack', () => output.some((l) => l.includes('Ctrl-C stops everything')));

    // Load: two clients, each request with an image new to the gateway (a JPEG with random
    // trailing bytes), so every request reaches the preprocessor and the encoder.
    const jpeg = readFileSync(join(fixturesDir, 'images', 'jpeg-422-640x427.jpg'));
    const results: Array<{ status: number; retryAfter: string | null; at: number }> = [];
    let loading = true;
    const client = async () => {
      while (loading) {
        const url = `data:image/jpeg;base64,${Buffer.concat([jpeg, randomBytes(8)]).toString('base64')}`;
        // Nothing may outlive its deadline: a request that hangs fails the test.
        const r = await fetch(`${base}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          signal: AbortSignal.timeout(30_000),
          body: JSON.stringify({
            model: 'tiny-seed0',
            max_tokens: 2,
            messages: [
              {
                role: 'user',
                content: [
                  { type: 'image_url', image_url: { url, split: false } },
                  { type: 'text', text: 'What is it?' },
                ],
              },
            ],
          }),
        });
        await r.arrayBuffer();
        // A polite client pauses after a refusal (this also bounds the requests an outage sees).
        if (r.status !== 200) await new Promise((resolve) => setTimeout(resolve, 50));
        results.push({
          status: r.status,
          retryAfter: r.headers.get('retry-after'),
          at: Date.now(),
        });
      }
    };
    const clients = [client(), client()];
    const okSince = (t: number, n: number) =>
      results.filter((r) => r.at > t && r.status === 200).length >= n;
    try {
      for (const stage of ['preprocessor', 'encoder', 'decoder']) {
        const start = Date.now();
        await until(`200s before killing the ${stage}`, () => okSince(start, 2));
        const starts = readies[stage]!.length;
        process.kill(readies[stage]!.at(-1)!.pid, 'SIGKILL');
        await until(`the ${stage} restarted`, () => readies[stage]!.length > starts);
        const back = Date.now();
        await until(`200s after the ${stage} came back`, () => okSince(back, 3));
      }
    } finally {
      loading = false;
      await Promise.allSettled(clients);
    }
    await Promise.all(clients);
    const outage = results.filter((r) => r.status !== 200);
    expect(new Set(outage.map((r) => r.status))).toEqual(new Set(outage.length ? [503] : []));
    for (const r of outage) expect(Number(r.retryAfter)).toBeGreaterThan(0);
    expect(outage.length).toBeGreaterThan(0); // the outages were seen, and answered 503
    const log = output.join('\n');
    for (const stage of ['preprocessor', 'encoder', 'decoder']) {
      expect(log).toMatch(
        new RegExp(`loupe start: ${stage} exited unexpectedly \\(signal SIGKILL\\); restarting in`),
      );
      expect(log).toContain(`loupe start: ${stage} is back`);
    }
    // The gateway was never restarted: it rode out each outage.
    expect(readies.gateway).toHaveLength(1);

    stack.kill('SIGINT');
    expect(await exited).toBe(0);
  }, 180_000);
});
