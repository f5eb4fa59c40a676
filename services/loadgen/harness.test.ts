import { describe, expect, it } from 'vitest';
import { PROFILES } from '../../load-tests/lib/profiles.js';
import { checkThresholds, percentiles, type RequestResult } from './harness.js';

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
