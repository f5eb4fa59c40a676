// `npm start` / `loupe start`: the local stack comes up, serves, and Ctrl-C stops it cleanly.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../proto/gen/grpc/health/v1/health.js';
import { checkHealth, healthClient } from './helpers/grpc.js';
import { fixturesDir } from './helpers/fixtures.js';
import { repoRoot, startProcess, stopServiceProcesses } from './helpers/service-process.js';
import { until } from './helpers/wait.js';

/** `loupe start` with every service on ephemeral ports, once it says the stack is running. */
const startStack = () =>
  startProcess(process.execPath, {
    args: [join(repoRoot, 'bin', 'loupe.js'), 'start'],
    cwd: repoRoot,
    env: Object.fromEntries(
      ['PREPROCESSOR', 'ENCODER', 'DECODER', 'GATEWAY'].flatMap((s) => [
        [`LOUPE_${s}_PORT`, '0'],
        [`LOUPE_${s}_METRICS_PORT`, '0'],
      ]),
    ),
    ready: (line) => line.includes('Ctrl-C stops everything'),
    // Stopped as a person would (Ctrl-C), so its services (in their own process group) go too.
    stopSignal: 'SIGINT',
  });
const GATEWAY_LINE = /^\s+gateway\s+HTTP (http:\/\/127\.0\.0\.1:\d+)\/v1/;

describe('loupe start', () => {
  // If the test fails midway, stop the stack (SIGINT, as above).
  afterEach(stopServiceProcesses);

  it('starts every existing service, prints where they are, and stops them all on SIGINT', async () => {
    const stack = await startStack();
    const output = stack.lines;
    // The summary comes after every service's lines; the gateway's address ends its list.
    await stack.waitForLine((line) => GATEWAY_LINE.test(line));
    const addresses: Record<string, string> = {};
    for (const line of output) {
      const match = /^\s+(preprocessor|encoder|decoder)\s+gRPC (127\.0\.0\.1:\d+)/.exec(line);
      if (match) addresses[match[1]!] = match[2]!;
      const http = GATEWAY_LINE.exec(line);
      if (http) addresses.gateway = http[1]!;
    }
    expect(Object.keys(addresses).sort()).toEqual([
      'decoder',
      'encoder',
      'gateway',
      'preprocessor',
    ]);
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

    expect(await stack.stop()).toBe(0);
    expect(output.join('\n')).toMatch(/preprocessor stopped/);
    expect(output.join('\n')).toMatch(/encoder stopped/);
    expect(output.join('\n')).toMatch(/decoder stopped/);
    expect(output.join('\n')).toMatch(/gateway stopped/);
    expect(output.join('\n')).toMatch(/loupe: stopped/);
  });
  it('restarts a stage killed under load: 503s with Retry-After only during the outage, then 200s', async () => {
    const stack = await startStack();
    const output = stack.lines;
    /** A stage's ready line: which stage, and the pid of that start. */
    const readyOf = (line: string) => {
      const ready = /^(preprocessor|encoder|decoder|gateway)\s*\| (\{.*"event":"ready".*\})$/.exec(
        line,
      );
      return ready && { stage: ready[1]!, pid: (JSON.parse(ready[2]!) as { pid: number }).pid };
    };
    /** Each stage's ready lines, in order: the first start, then each restart. */
    const readies = (stage: string) =>
      output.flatMap((l) => {
        const ready = readyOf(l);
        return ready?.stage === stage ? [ready.pid] : [];
      });
    const base = GATEWAY_LINE.exec(await stack.waitForLine((l) => GATEWAY_LINE.test(l)))![1]!;
    /** Waits on the load's results (the stack must stay up meanwhile). */
    const untilResults = (what: string, ok: () => boolean) =>
      until(
        what,
        () => {
          if (stack.child.exitCode !== null)
            throw new Error(`the stack exited, waiting for ${what}`);
          return ok();
        },
        { timeoutMs: 60_000, intervalMs: 20, detail: () => output.slice(-40).join('\n') },
      );

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
        await untilResults(`200s before killing the ${stage}`, () => okSince(start, 2));
        const killed = readies(stage).at(-1)!;
        process.kill(killed, 'SIGKILL');
        // Its next ready line: the supervisor started it again.
        await stack.waitForLine((l) => {
          const ready = readyOf(l);
          return ready?.stage === stage && ready.pid !== killed;
        });
        const back = Date.now();
        await untilResults(`200s after the ${stage} came back`, () => okSince(back, 3));
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
    expect(readies('gateway')).toHaveLength(1);

    expect(await stack.stop()).toBe(0);
  }, 180_000);
});
