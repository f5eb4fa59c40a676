// The k6 scenarios are type-checked with @types/k6 by `npm run typecheck`; this checks that
// every named scenario is there and has what k6 needs.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  expectedIterations,
  k6Thresholds,
  PROFILES,
  shapeTag,
} from '../load-tests/lib/profiles.js';
import { summaryOutputs, textSummary } from '../load-tests/lib/summary.js';
import { repoRoot } from './helpers/service-process.js';

const dir = join(repoRoot, 'load-tests', 'scenarios');

describe('k6 scenarios', () => {
  it('has the xk6-sse entry point for true streaming TTFT', () => {
    const text = readFileSync(join(repoRoot, 'load-tests', 'sse.ts'), 'utf8');
    expect(text).toMatch(/export const options: Options = scenarioOptions\(name\)/);
    expect(readFileSync(join(repoRoot, 'load-tests', 'lib', 'chat-sse.ts'), 'utf8')).toMatch(
      /from 'k6\/x\/sse'/,
    );
  });

  it('has every named scenario, each exporting options (with thresholds) and a default function', () => {
    const names = readdirSync(dir)
      .map((f) => f.replace(/\.ts$/, ''))
      .sort();
    expect(names).toEqual([
      'decoder-grpc',
      'image-heavy',
      'ramp',
      'smoke',
      'soak',
      'spike',
      'throughput',
    ]);
    for (const name of names) {
      const text = readFileSync(join(dir, `${name}.ts`), 'utf8');
      expect(text, name).toMatch(/export const options: Options = /);
      if (name !== 'decoder-grpc') expect(text, name).toContain(`scenarioOptions('${name}')`);
      else expect(text).toMatch(/thresholds:/);
      expect(text, name).toMatch(/export default function \(\): void \{/);
      expect(text, name).toContain(`export const handleSummary = summaryHandler('${name}')`);
    }
  });

  it('bounds dropped iterations where the profile promises the arrival rate', () => {
    expect(expectedIterations(PROFILES.smoke, 2)).toBe(10);
    // ramp: 1→1 for 60 s, then linear ramps 1→2, 2→3, 3→4: (60 + 90 + 150 + 210) × 0.5 rps.
    expect(expectedIterations(PROFILES.ramp, 0.5)).toBe(255);
    expect(expectedIterations(PROFILES.throughput, 2, 600)).toBe(1200);
    expect(k6Thresholds(PROFILES.throughput.limits, 1200).dropped_iterations).toEqual([
      'count<=12',
    ]);
    // The ramp finds the knee: dropping iterations past it is its measurement, not a failure.
    expect(k6Thresholds(PROFILES.ramp.limits, 255).dropped_iterations).toBeUndefined();
  });

  it('tags each request with its shape', () => {
    expect(PROFILES.soak.mix.map(shapeTag)).toEqual([
      '0img',
      '1img-small-cached',
      '1img-small-new',
      '2img-small-new',
    ]);
    expect(shapeTag(PROFILES['image-heavy'].mix[0]!)).toBe('3img-large-new-split');
  });

  it('summarizes a run as text (per shape, with threshold verdicts) and JSON files', () => {
    const trend = (p50: number) => ({
      med: p50,
      'p(90)': p50 * 2,
      'p(95)': p50 * 3,
      'p(99)': p50 * 4,
    });
    const data = {
      state: { testRunDurationMs: 60_000 },
      metrics: {
        http_reqs: { type: 'counter', values: { count: 120, rate: 2 } },
        http_req_failed: { type: 'rate', values: { rate: 0.025 } },
        iterations: { type: 'counter', values: { count: 120 } },
        dropped_iterations: {
          type: 'counter',
          values: { count: 3 },
          thresholds: { 'count<=1': { ok: false } },
        },
        loupe_ttft: {
          type: 'trend',
          values: trend(150),
          thresholds: { 'p(95)<5000': { ok: true } },
        },
        'loupe_ttft{shape:1img-small-new}': { type: 'trend', values: trend(300) },
        'loupe_ttft{shape:0img}': { type: 'trend', values: trend(40) },
        loupe_tpot: { type: 'trend', values: trend(12) },
        loupe_output_tokens: { type: 'counter', values: { count: 3840, rate: 64 } },
      },
    };
    const text = textSummary('throughput', data);
    expect(text).toContain('Loupe k6 summary: throughput (60 s)');
    expect(text).toMatch(/requests\s+120 \(2\.0\/s\), failed 2\.5%/);
    expect(text).toMatch(/dropped 3\.0/);
    expect(text).toMatch(/time to first token\s+150\s+300\s+450\s+600/);
    expect(text).toMatch(/ {4}1img-small-new\s+300\s+600\s+900\s+1200/);
    expect(text).toMatch(/ {4}0img\s+40\.0\s+80\.0\s+120\s+160/);
    expect(text).toContain('FAIL dropped_iterations: count<=1');
    expect(text).toContain('ok   loupe_ttft: p(95)<5000');
    const files = summaryOutputs('throughput', data, '/tmp/out/');
    expect(Object.keys(files).sort()).toEqual([
      '/tmp/out/loupe-throughput-summary.json',
      '/tmp/out/loupe-throughput-summary.txt',
      'stdout',
    ]);
    expect(JSON.parse(files['/tmp/out/loupe-throughput-summary.json']!)).toEqual(data);
    expect(files.stdout).toBe(text);
  });
});
