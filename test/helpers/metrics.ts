// Reads a service's /metrics endpoint (the Prometheus text exposition format, as prom-client
// writes it) for tests: one sample per series line, looked up by name and labels.
import { until, type UntilOptions } from './wait.js';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
const unescape = (v: string) => v.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
const number = (v: string) =>
  v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : v === 'NaN' ? NaN : Number(v);

/** Every sample of an exposition text (comments and blank lines skipped). */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not an exposition sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (m[2] ?? '').matchAll(LABEL)) labels[key!] = unescape(value!);
    samples.push({ name: m[1]!, labels, value: number(m[3]!) });
  }
  return samples;
}

/** A scrape: its text, and its samples by name and labels. */
export class Metrics {
  readonly samples: Sample[];
  constructor(readonly text: string) {
    this.samples = parseMetrics(text);
  }

  /** The series named `name` whose labels include `labels`. */
  series(name: string, labels: Record<string, string> = {}): Sample[] {
    return this.samples.filter(
      (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
    );
  }

  /** The value of the first such series; undefined if there is none. */
  value(name: string, labels: Record<string, string> = {}): number | undefined {
    return this.series(name, labels)[0]?.value;
  }

  /** The sum over every such series (0 if there is none). */
  sum(name: string, labels: Record<string, string> = {}): number {
    return this.series(name, labels).reduce((total, s) => total + s.value, 0);
  }
}

/** A metrics port, a /metrics URL, or a started service (its metricsPort). */
export type MetricsTarget = number | string | { metricsPort: number };

const urlOf = (target: MetricsTarget) =>
  typeof target === 'string'
    ? target
    : `http://127.0.0.1:${typeof target === 'number' ? target : target.metricsPort}/metrics`;

/** Scrapes `target` once; throws unless it answers 200. */
export async function scrapeMetrics(target: MetricsTarget): Promise<Metrics> {
  const url = urlOf(target);
  const response = await fetch(url);
  const text = await response.text();
  if (response.status !== 200) throw new Error(`${url} answered ${response.status}: ${text}`);
  return new Metrics(text);
}

/** Scrapes `target` until `ok` holds (a bounded wait), resolving with that scrape. */
export async function waitForMetrics(
  target: MetricsTarget,
  ok: (metrics: Metrics) => boolean,
  options: UntilOptions = {},
): Promise<Metrics> {
  let last: Metrics | undefined;
  return until(
    `the metrics of ${urlOf(target)} to be as expected`,
    async () => {
      last = await scrapeMetrics(target);
      return ok(last) ? last : undefined;
    },
    { ...options, detail: () => last?.text ?? '(no scrape yet)' },
  );
}
