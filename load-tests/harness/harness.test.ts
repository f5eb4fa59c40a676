import { describe, expect, it } from 'vitest';
import { PROFILES } from '../lib/profiles.js';
import {
  chartSvg,
  checkThresholds,
  niceTicks,
  percentiles,
  type RequestResult,
} from './harness.js';

const ok = (ttftMs: number, tpotMs: number): RequestResult => ({
  stage: 0,
  offeredRate: 1,
  startedMs: 0,
  ok: true,
  ttftMs,
  tpotMs,
  e2eMs: ttftMs + 10,
  outputTokens: 8,
});
const failed: RequestResult = {
  stage: 0,
  offeredRate: 1,
  startedMs: 0,
  ok: false,
  errorType: 'http_503',
  e2eMs: 1,
  outputTokens: 0,
};

describe('harness thresholds', () => {
  it('takes percentiles as the nearest rank', () => {
    const v = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentiles(v)).toEqual({ p50: 50, p95: 95, p99: 99 });
  });

  it('passes within the profile limits and names each one broken', () => {
    const limits = PROFILES.throughput.limits;
    expect(
      checkThresholds(
        Array.from({ length: 100 }, () => ok(100, 10)),
        PROFILES.throughput,
      ),
    ).toEqual([]);
    const bad = [
      ...Array.from({ length: 90 }, () => ok(limits.ttftP95Ms + 1, limits.tpotP95Ms + 1)),
      ...Array.from({ length: 10 }, () => failed),
    ];
    expect(checkThresholds(bad, PROFILES.throughput)).toEqual([
      'error rate 10.0% > 1.0%',
      `TTFT p95 ${limits.ttftP95Ms + 1} ms > ${limits.ttftP95Ms} ms`,
      `TPOT p95 ${limits.tpotP95Ms + 1} ms > ${limits.tpotP95Ms} ms`,
    ]);
  });
});

describe('harness chart', () => {
  it('puts round ticks on each axis, ending at or past the largest value', () => {
    expect(niceTicks(7.3)).toEqual([0, 2, 4, 6, 8]);
    expect(niceTicks(0.34)).toEqual([0, 0.1, 0.2, 0.3, 0.4]);
    expect(niceTicks(1234)).toEqual([0, 500, 1000, 1500]);
    expect(niceTicks(10)).toEqual([0, 2, 4, 6, 8, 10]);
  });

  it('draws the three axes with labelled ticks', () => {
    const p = { p50: 100, p95: 180, p99: 200 };
    const stage = (offeredRate: number, throughputRps: number) => ({
      stage: 0,
      offeredRate,
      requests: 10,
      throughputRps,
      tokensPerS: 50,
      errorRate: 0,
      ttft: p,
      tpot: p,
      e2e: { p50: 400 * offeredRate, p95: 900 * offeredRate, p99: 1000 },
    });
    const svg = chartSvg('ramp', [stage(0.5, 0.5), stage(1, 0.9), stage(1.5, 1.2)]);
    const count = (cls: string) => svg.split(`class="${cls}"`).length - 1;
    expect(count('tick-x')).toBe(niceTicks(1.5).length);
    expect(count('tick-latency')).toBe(niceTicks(1350).length);
    expect(count('tick-throughput')).toBe(niceTicks(1.2).length);
    for (const label of ['>1.5<', '>1500<', '>0.5<']) expect(svg).toContain(label);
    expect(svg).toContain('offered load (requests/s)');
  });
});
