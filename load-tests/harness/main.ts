// `npm run load -- --scenario NAME [--rate R] [--duration D]`: runs a k6 scenario's profile
// from Node against a running stack (default http://127.0.0.1:8080, as `npm start` serves),
// prints TTFT, TPOT, end-to-end latency, throughput and errors per stage, writes a JSON result
// and an SVG chart, and exits 1 when a threshold fails. Only loopback targets, unless
// --allow-remote.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { PROFILES } from '../lib/profiles.js';
import { packageRoot } from '../../services/runtime/index.js';
import { chartSvg, checkThresholds, runScenario } from './harness.js';

function seconds(value: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!m) throw new Error(`--duration must look like 30, 30s, 2m or 1h, got "${value}"`);
  const n = Number(m[1]);
  return n * { ms: 0.001, s: 1, m: 60, h: 3600 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$/;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      scenario: { type: 'string' },
      rate: { type: 'string', default: '1' },
      duration: { type: 'string' },
      url: { type: 'string', default: process.env.LOUPE_GATEWAY_URL ?? 'http://127.0.0.1:8080' },
      model: { type: 'string' },
      'max-tokens': { type: 'string', default: '32' },
      'max-requests': { type: 'string', default: '10000' },
      'max-in-flight': { type: 'string', default: '256' },
      out: { type: 'string', default: join(packageRoot(), 'bench-results') },
      'allow-remote': { type: 'boolean', default: false },
    },
  });
  const name = values.scenario as keyof typeof PROFILES | undefined;
  if (!name || !(name in PROFILES)) {
    throw new Error(
      `--scenario must be one of ${Object.keys(PROFILES).join(', ')}, got "${values.scenario ?? ''}"`,
    );
  }
  const url = values.url!.replace(/\/$/, '');
  if (!values['allow-remote'] && !LOOPBACK.test(new URL(url).hostname)) {
    throw new Error(`${url} is not a loopback address; pass --allow-remote to load another host`);
  }
  const apiKey = process.env.LOUPE_API_KEY;
  let model = values.model;
  if (!model) {
    const r = await fetch(`${url}/v1/models`, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
    });
    if (!r.ok)
      throw new Error(
        `GET ${url}/v1/models answered ${r.status}: is the stack running (npm start)?`,
      );
    model = ((await r.json()) as { data: Array<{ id: string }> }).data[0]!.id;
  }
  const images = join(packageRoot(), 'test', 'fixtures', 'images');
  const options = {
    url,
    model,
    ...(apiKey ? { apiKey } : {}),
    rate: Number(values.rate),
    ...(values.duration ? { durationS: seconds(values.duration) } : {}),
    maxTokens: Number(values['max-tokens']),
    maxRequests: Number(values['max-requests']),
    maxInFlight: Number(values['max-in-flight']),
    images: {
      small: readFileSync(join(images, 'webp-lossy-640x480.webp')),
      large: readFileSync(join(images, 'jpeg-2400x1600.jpg')),
    },
  };
  if (!(options.rate > 0)) throw new Error(`--rate must be > 0, got "${values.rate}"`);
  const run = await runScenario(name, options);
  const failures = checkThresholds(run.results, PROFILES[name]);

  const row = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(7) : c.padStart(13))).join('') + '\n';
  process.stdout.write(
    `load: scenario ${name} against ${url} (model ${model}), base rate ${options.rate}/s, ${run.results.length} requests in ${run.seconds.toFixed(1)} s\n\n`,
  );
  process.stdout.write(
    row([
      'stage',
      'offered/s',
      'done/s',
      'tokens/s',
      'errors',
      'TTFT p50',
      'TTFT p95',
      'TPOT p95',
      'e2e p50',
      'e2e p99',
    ]),
  );
  for (const s of run.stages) {
    process.stdout.write(
      row([
        String(s.stage),
        s.offeredRate.toFixed(2),
        s.throughputRps.toFixed(2),
        s.tokensPerS.toFixed(1),
        `${(s.errorRate * 100).toFixed(1)}%`,
        `${s.ttft.p50.toFixed(0)} ms`,
        `${s.ttft.p95.toFixed(0)} ms`,
        `${s.tpot.p95.toFixed(1)} ms`,
        `${s.e2e.p50.toFixed(0)} ms`,
        `${s.e2e.p99.toFixed(0)} ms`,
      ]),
    );
  }
  const errors: Record<string, number> = {};
  for (const r of run.results) if (!r.ok) errors[r.errorType!] = (errors[r.errorType!] ?? 0) + 1;
  mkdirSync(values.out!, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const base = join(values.out!, `load-${name}-${stamp}`);
  writeFileSync(
    `${base}.json`,
    JSON.stringify(
      {
        scenario: name,
        url,
        model,
        options: { ...options, images: undefined, apiKey: undefined },
        seconds: run.seconds,
        errors,
        stages: run.stages,
        failures,
      },
      null,
      2,
    ),
  );
  writeFileSync(
    `${base}.svg`,
    chartSvg(`${name}: latency and throughput against offered load`, run.stages),
  );
  process.stdout.write(
    `\nerrors by type: ${JSON.stringify(errors)}\nwrote ${base}.json and ${base}.svg\n` +
      (failures.length ? `THRESHOLDS FAILED: ${failures.join('; ')}\n` : 'thresholds: all held\n'),
  );
  return failures.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(
      `npm run load: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    process.exit(2);
  },
);
