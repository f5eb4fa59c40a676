// The end-of-test summary (k6's handleSummary): the whole summary as JSON, and a short text
// report of Loupe's figures — requests, errors, TTFT/TPOT percentiles per request shape,
// dropped iterations and each threshold's verdict — on stdout and in a file. Pure functions of
// k6's summary data (no k6 imports), so they are tested with Node too.

/** The part of k6's summary data this reads. */
export interface SummaryData {
  metrics: Record<
    string,
    {
      type: string;
      values: Record<string, number>;
      thresholds?: Record<string, { ok: boolean }>;
    }
  >;
  state?: { testRunDurationMs?: number };
}

const fmt = (v: number | undefined, unit = '') =>
  v === undefined || !Number.isFinite(v) ? '-' : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)}${unit}`;

/** `loupe_ttft{shape:1img-small-new}` → the shape, for per-shape rows. */
const shapeOf = (name: string) => /\{shape:([^}]+)\}$/.exec(name)?.[1];

export function textSummary(scenario: string, data: SummaryData): string {
  const m = data.metrics;
  const v = (name: string, key: string) => m[name]?.values[key];
  const seconds = (data.state?.testRunDurationMs ?? 0) / 1000;
  const lines = [
    `Loupe k6 summary: ${scenario} (${seconds.toFixed(0)} s)`,
    `  requests      ${fmt(v('http_reqs', 'count'))} (${fmt(v('http_reqs', 'rate'))}/s), failed ${fmt(100 * (v('http_req_failed', 'rate') ?? 0))}%`,
    `  iterations    ${fmt(v('iterations', 'count'))}, dropped ${fmt(v('dropped_iterations', 'count') ?? 0)}`,
    `  output tokens ${fmt(v('loupe_output_tokens', 'count'))} (${fmt(v('loupe_output_tokens', 'rate'))}/s), errors ${fmt(v('loupe_errors', 'count') ?? 0)}`,
    '',
    '  latency (ms)                         p50      p90      p95      p99',
  ];
  const row = (label: string, name: string) =>
    `  ${label.padEnd(34)} ${['med', 'p(90)', 'p(95)', 'p(99)'].map((k) => fmt(v(name, k)).padStart(8)).join(' ')}`;
  for (const [label, base] of [
    ['time to first token', 'loupe_ttft'],
    ['time per output token', 'loupe_tpot'],
  ] as const) {
    if (!m[base]) continue;
    lines.push(row(label, base));
    for (const name of Object.keys(m).sort()) {
      const shape = name.startsWith(`${base}{`) ? shapeOf(name) : undefined;
      if (shape) lines.push(row(`  ${shape}`, name));
    }
  }
  const verdicts = Object.entries(m).flatMap(([name, metric]) =>
    Object.entries(metric.thresholds ?? {}).map(
      ([expr, { ok }]) => `  ${ok ? 'ok  ' : 'FAIL'} ${name}: ${expr}`,
    ),
  );
  if (verdicts.length) lines.push('', '  thresholds', ...verdicts.sort());
  return `${lines.join('\n')}\n`;
}

/** handleSummary's outputs: the text on stdout, and both forms as files under `dir`. */
export function summaryOutputs(
  scenario: string,
  data: SummaryData,
  dir: string,
): Record<string, string> {
  const text = textSummary(scenario, data);
  const base = `${dir.replace(/\/$/, '')}/loupe-${scenario}-summary`;
  return { stdout: text, [`${base}.json`]: JSON.stringify(data, null, 2), [`${base}.txt`]: text };
}
