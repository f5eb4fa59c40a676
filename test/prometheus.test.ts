// The chart's queries against a real Prometheus: the local stack (four processes, tiny
// checkpoint, ephemeral loopback ports) is scraped with exactly the target labels the chart's
// ServiceMonitors give in a cluster (derived from the rendered chart, so they cannot drift),
// load is put on it, and every query the chart renders is evaluated through Prometheus's
// HTTP API: the KEDA triggers (one series per stage, rising under load), the alert rules
// (`promtool check rules`, then evaluated by Prometheus itself) and the dashboard's panels.
// Needs helm and prometheus/promtool on PATH (`.ci/run` installs them); without them the
// file is skipped, saying so, except under CI=true, where that is a failure.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, stringify } from 'yaml';
import { writeTinyModel } from '../services/model/index.js';
import {
  findTool,
  selectors,
  serviceMonitorTargets,
  startPrometheus,
  targetOnly,
  type DerivedTarget,
  type PrometheusResult,
  type RunningPrometheus,
} from './helpers/prometheus.js';
import {
  builtService,
  ephemeralPorts,
  repoRoot,
  startGateway,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from './helpers/service-process.js';
import { until as waitUntil } from './helpers/wait.js';

const chart = join(repoRoot, 'charts', 'loupe');
const helm = findTool('helm', ['version', '--short']);
const prometheusBin = findTool('prometheus');
const promtool = findTool('promtool');
const available = helm !== undefined && prometheusBin !== undefined && promtool !== undefined;
const NAMESPACE = 'loupe';
const MODEL_ID = 'tiny-prom';
const KEY = 'sk-loupe-prometheus-test';
/** Stand-in for Grafana's $__rate_interval: several 1 s scrapes. */
const RATE_INTERVAL = '1m';

describe('prometheus tools', () => {
  it('helm, prometheus and promtool are there, or this file is skipped (never under CI)', () => {
    const missing = [
      ['helm', helm, 'go install helm.sh/helm/v3/cmd/helm@v3.22.0'],
      ['prometheus', prometheusBin, 'apt-get install prometheus'],
      ['promtool', promtool, 'apt-get install prometheus'],
    ].filter(([, found]) => found === undefined);
    if (missing.length === 0) return;
    const names = missing.map(([n, , how]) => `${n} (${how})`).join(', ');
    if (process.env.CI === 'true')
      throw new Error(`CI=true but missing: ${names}; .ci/run installs them`);
    console.warn(`prometheus checks SKIPPED, missing: ${names}`);
  });
});

interface K8sObject {
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
}

/** A solid-colour PNG: a distinct colour per request, so the encoder's cache never answers. */
function solidPng(width: number, height: number, rgb: [number, number, number]): Buffer {
  const table = new Uint32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes: Buffer) => {
    let c = 0xffffffff;
    for (const b of bytes) c = table[(c ^ b) & 0xff]! ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(body.length + 8);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), body.length + 4);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  const row = Buffer.alloc(1 + width * 3);
  for (let x = 0; x < width; x++) row.set(rgb, 1 + x * 3);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.concat(Array.from({ length: height }, () => row)))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

const work = mkdtempSync(join(tmpdir(), 'loupe-prom-'));
let objects: K8sObject[] = [];
let targets: DerivedTarget[] = [];
let kedaQueries: Array<{ stage: string; query: string }> = [];
let rulesYaml = '';
let alertExprs: Array<{ alert: string; expr: string }> = [];
let panelExprs: Array<{ panel: string; expr: string }> = [];
let processes: ServiceProcess[] = [];
let gatewayBase = '';
let prometheus: RunningPrometheus | undefined;
/** KEDA query → [value before load, highest value seen under load]. */
const rose = new Map<string, [number, number]>();
let requestsSent = 0;
let requestsFailed = 0;
let firstFailure = '';

/** Every metric name the services register (`name: 'loupe_...'`) or prom-client adds. */
function declaredMetricNames(): Set<string> {
  const names = new Set<string>(['up']);
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts'))
        for (const m of readFileSync(path, 'utf8').matchAll(/name: '(loupe_[a-z0-9_]+)'/g))
          names.add(m[1]!);
    }
  };
  walk(join(repoRoot, 'services'));
  return names;
}

/** Whether `name` (a histogram's _bucket/_sum/_count too) is declared in the sources. */
const declared = (names: Set<string>, name: string) =>
  names.has(name) || names.has(name.replace(/_(bucket|sum|count)$/, ''));

const value = (r: PrometheusResult[]) => Number(r[0]?.value[1]);

async function chat(body: Record<string, unknown>): Promise<void> {
  const r = await fetch(`${gatewayBase}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: MODEL_ID, temperature: 0, ...body }),
  });
  const text = await r.text();
  requestsSent++;
  if (r.status === 200) return;
  requestsFailed++;
  firstFailure ||= `${r.status} ${text.slice(0, 300)}`;
}

beforeAll(async () => {
  if (!available) return;
  const started = Date.now();
  // The chart as a cluster with the Prometheus operator and KEDA renders it, both
  // event-driven stages autoscaled.
  const rendered = execFileSync(
    helm!,
    [
      'template',
      'demo',
      chart,
      '-n',
      NAMESPACE,
      '--kube-version',
      '1.30.0',
      '--api-versions',
      'monitoring.coreos.com/v1',
      '--api-versions',
      'keda.sh/v1alpha1',
      '--set',
      'encoder.autoscaling.enabled=true',
      '--set',
      'decoder.autoscaling.enabled=true',
      '--set',
      'apiKeys.keys[0]=sk-loupe-unused-here',
    ],
    { encoding: 'utf8' },
  );
  objects = parseAllDocuments(rendered)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
  targets = serviceMonitorTargets(objects, NAMESPACE);
  kedaQueries = objects
    .filter((o) => o.kind === 'ScaledObject')
    .flatMap((o) =>
      (o.spec!.triggers as Array<{ metadata: { query: string } }>).map((t) => ({
        stage: o.metadata.name.replace('demo-loupe-', ''),
        query: t.metadata.query,
      })),
    );
  const rule = objects.find((o) => o.kind === 'PrometheusRule')!;
  const groups = (rule.spec as { groups: Array<{ rules: Array<Record<string, unknown>> }> }).groups;
  rulesYaml = stringify({ groups });
  alertExprs = groups.flatMap((g) =>
    g.rules.map((r) => ({ alert: String(r.alert), expr: String(r.expr) })),
  );
  const dashboard = objects.find(
    (o) => o.kind === 'ConfigMap' && o.metadata.name.endsWith('-dashboard'),
  )!;
  const json = JSON.parse(Object.values(dashboard.data!)[0]!) as {
    panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
  };
  panelExprs = json.panels.flatMap((p) =>
    (p.targets ?? []).map((t) => ({
      panel: p.title,
      expr: t.expr.replaceAll('$__rate_interval', RATE_INTERVAL),
    })),
  );

  // The stack, small enough to queue: two KV slots, and sub-images waiting 50 ms for others.
  const modelDir = join(work, 'tiny');
  writeTinyModel({ out: modelDir, seed: 0 });
  const common = { LOUPE_MODEL_DIR: modelDir, LOUPE_MODEL_ID: MODEL_ID };
  const stages = await Promise.all([
    startServiceProcess(builtService('preprocessor'), {
      ...common,
      ...ephemeralPorts('PREPROCESSOR'),
      LOUPE_PREPROCESSOR_WORKERS: '1',
    }),
    startServiceProcess(builtService('encoder'), {
      ...common,
      ...ephemeralPorts('ENCODER'),
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_ENCODER_MAX_WAIT_MS: '50',
    }),
    startServiceProcess(builtService('decoder'), {
      ...common,
      ...ephemeralPorts('DECODER'),
      LOUPE_DECODER_THREADS: '1',
      LOUPE_DECODER_MAX_RUNNING: '2',
    }),
  ]);
  processes = stages;
  const gateway = await startGateway(
    modelDir,
    {
      preprocessor: stages[0]!.grpcAddress,
      encoder: stages[1]!.grpcAddress,
      decoder: stages[2]!.grpcAddress,
    },
    { ...common, LOUPE_GATEWAY_API_KEYS: KEY },
  );
  gatewayBase = gateway.httpBase;
  processes = [...stages, gateway];
  const metricsPort: Record<string, number> = {
    preprocessor: stages[0]!.metricsPort,
    encoder: stages[1]!.metricsPort,
    decoder: stages[2]!.metricsPort,
    gateway: gateway.metricsPort,
  };

  // One scrape config per ServiceMonitor endpoint, carrying exactly its target labels.
  prometheus = await startPrometheus(
    prometheusBin!,
    {
      global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
      scrape_configs: targets.map((t) => {
        const { job, ...labels } = t.labels;
        return {
          job_name: job,
          honor_labels: t.honorLabels,
          metrics_path: t.metricsPath,
          static_configs: [{ targets: [`127.0.0.1:${metricsPort[t.stage]}`], labels }],
        };
      }),
    },
    { 'loupe-rules.yaml': rulesYaml },
  );
  const prom = prometheus;
  const until = (what: string, ok: () => Promise<boolean>, ms: number) =>
    waitUntil(what, ok, {
      timeoutMs: ms,
      intervalMs: 250,
      detail: () =>
        `${requestsSent} requests (${requestsFailed} failed: ${firstFailure}); ` +
        `KEDA queries [before, max]: ${JSON.stringify([...rose])}\n${prom.output()}`,
    });
  await until(
    'every target scraped up',
    async () => (await prom.query('up == 1')).length === targets.length,
    20_000,
  );
  for (const { query } of kedaQueries) rose.set(query, [value(await prom.query(query)), -1]);

  // Load: image requests (a new colour each, split into 5 sub-images) and text requests,
  // until every autoscaling signal has risen in Prometheus (or 40 s pass).
  let stop = false;
  let n = 0;
  const worker = async (images: boolean) => {
    while (!stop) {
      const i = n++;
      const png = solidPng(64, 48, [i % 256, (i >> 8) % 256, 99]);
      await chat({
        max_tokens: 48,
        messages: [
          {
            role: 'user',
            content: images
              ? [
                  {
                    type: 'image_url',
                    image_url: {
                      url: `data:image/png;base64,${png.toString('base64')}`,
                      split: true,
                    },
                  },
                  { type: 'text', text: `What colour is this (${i})?` },
                ]
              : `Tell me a long story about the number ${i}.`,
          },
        ],
      });
    }
  };
  const load = [true, true, true, false, false, false].map((images) => worker(images));
  try {
    await until(
      'every KEDA query rose under load',
      async () => {
        // A failing stack puts no load where it counts: stop at once, saying why.
        if (requestsFailed > 0) throw new Error(`a chat request failed: ${firstFailure}`);
        for (const { query } of kedaQueries) {
          const entry = rose.get(query)!;
          entry[1] = Math.max(entry[1], value(await prom.query(query)));
        }
        return [...rose.values()].every(([before, max]) => max > before);
      },
      Math.max(10_000, 60_000 - (Date.now() - started)),
    );
  } finally {
    stop = true;
    await Promise.all(load);
  }
  // Prometheus has scraped the end of the load, and every rule has been evaluated since.
  await until(
    'the last request scraped',
    async () =>
      value(await prom.query(`sum(loupe_gateway_requests_total{route="chat"})`)) === requestsSent,
    10_000,
  );
  const loaded = Date.now() / 1000;
  // And every target scraped once more: a series that first appeared at the end of the load
  // (an image request that finished last) then has the two samples a rate() needs.
  await until(
    'every rule evaluated and every target scraped after the load',
    async () => {
      if (!(value(await prom.query('min(timestamp(up))')) > loaded)) return false;
      const data = await prom.api<{
        groups: Array<{ rules: Array<{ lastEvaluation: string }> }>;
      }>('/api/v1/rules');
      const rules = data.groups.flatMap((g) => g.rules);
      return (
        rules.length === alertExprs.length &&
        rules.every((r) => Date.parse(r.lastEvaluation) / 1000 > loaded)
      );
    },
    10_000,
  );
}, 90_000);

afterAll(async () => {
  await prometheus?.stop();
  for (const p of processes.reverse()) expect(await p.stop(10_000)).toBe(0);
  await stopServiceProcesses(); // any a failed start left behind
  rmSync(work, { recursive: true, force: true });
});

describe.runIf(available)('the chart against a real Prometheus scraping the stack', () => {
  it('derives the ServiceMonitors’ target labels from the rendered chart', () => {
    expect(targets.map((t) => t.stage).sort()).toEqual([
      'decoder',
      'encoder',
      'gateway',
      'preprocessor',
    ]);
    expect(targets.find((t) => t.stage === 'encoder')).toMatchObject({
      honorLabels: false,
      metricsPath: '/metrics',
      containerPort: 9102,
      labels: {
        job: 'demo-loupe-encoder',
        namespace: NAMESPACE,
        service: 'demo-loupe-encoder',
        endpoint: 'metrics',
        container: 'encoder',
      },
    });
  });

  it('scrapes every stage with those labels; the application’s `service` becomes `exported_service`', async () => {
    for (const t of targets) {
      const series = await prometheus!.query(
        `loupe_process_cpu_seconds_total{service="${t.labels.service}"}`,
      );
      expect(series.length, t.stage).toBe(1);
      const { __name__, instance, model_name, ...labels } = series[0]!.metric;
      expect(__name__).toBe('loupe_process_cpu_seconds_total');
      expect(instance).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(labels).toEqual({ ...t.labels, exported_service: t.stage });
      // Model metrics carry the model's name (the preprocessor runs no model).
      expect(model_name, t.stage).toBe(t.stage === 'preprocessor' ? undefined : MODEL_ID);
    }
    // The query form the chart had before: Kubernetes discovery leaves it nothing to match.
    expect(
      await prometheus!.query(
        `avg(avg_over_time(loupe_encoder_queue_depth{service="encoder", namespace="${NAMESPACE}"}[1m]))`,
      ),
    ).toEqual([]);
    // prom-client's process metrics under one prefix, not loupe_process_process_*.
    expect(await prometheus!.query('count({__name__=~"loupe_process_process_.*"})')).toEqual([]);
  });

  it('every KEDA trigger query returns one series for its stage, and rises under load', async () => {
    expect(kedaQueries.map((q) => q.stage)).toEqual(['encoder', 'decoder', 'decoder']);
    for (const { stage, query } of kedaQueries) {
      expect(query).toMatch(/^sum\(/); // summed over pods: KEDA's AverageValue divides by pods
      const result = await prometheus!.query(query);
      expect(result.length, query).toBe(1);
      // The selector alone: exactly the stage's one target (one pod here).
      const [selector] = selectors(query);
      const series = await prometheus!.query(`${selector!.name}${selector!.matchers}`);
      expect(
        series.map((s) => s.metric.exported_service),
        stage,
      ).toEqual([stage]);
      const [before, max] = rose.get(query)!;
      expect(before, query).toBe(0);
      expect(max, query).toBeGreaterThan(before);
    }
    expect(requestsSent).toBeGreaterThan(0);
    expect(requestsFailed).toBe(0);
  });

  it('promtool accepts the PrometheusRule, and Prometheus evaluates every rule without error', async () => {
    const file = join(work, 'rules.yaml');
    writeFileSync(file, rulesYaml);
    const checked = spawnSync(promtool!, ['check', 'rules', file], { encoding: 'utf8' });
    expect(checked.status, checked.stdout + checked.stderr).toBe(0);
    expect(checked.stdout).toMatch(new RegExp(`SUCCESS: ${alertExprs.length} rules found`));
    const data = await prometheus!.api<{
      groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }>;
    }>('/api/v1/rules');
    const rules = data.groups.flatMap((g) => g.rules);
    expect(rules.length).toBe(alertExprs.length);
    for (const r of rules)
      expect([r.name, r.health, r.lastError ?? '']).toEqual([r.name, 'ok', '']);
    // Nothing fires on a working stack under load. (A starved machine may make an alert
    // pending for a moment, e.g. a gateway's 0.5 s stage check timing out: their `for`
    // durations are there so that such blips never fire.)
    const alerts = await prometheus!.api<{
      alerts: Array<{ state: string; labels: { alertname: string } }>;
    }>('/api/v1/alerts');
    expect(alerts.alerts.filter((a) => a.state === 'firing')).toEqual([]);
  });

  it('every alert expression and dashboard query evaluates, and matches the scraped series', async () => {
    const names = declaredMetricNames();
    const present = new Set(await prometheus!.api<string[]>('/api/v1/label/__name__/values'));
    const queries = [
      ...alertExprs.map((a) => ({ where: `alert ${a.alert}`, expr: a.expr, alert: true })),
      ...panelExprs.map((p) => ({ where: `panel ${p.panel}`, expr: p.expr, alert: false })),
    ];
    expect(queries.length).toBeGreaterThan(40);
    /** Selectors without series under this load: only errors' may be such. */
    const empty = new Set<string>();
    let withData = 0;
    for (const { where, expr, alert } of queries) {
      const result = await prometheus!.query(expr); // throws on a parse or evaluation error
      const used = selectors(expr);
      expect(used.length, where).toBeGreaterThan(0);
      let allHaveData = true;
      for (const s of used) {
        if (!present.has(s.name)) {
          // A metric that is not there must at least be a real one (failure counters appear
          // only on failures): a misspelt name fails here.
          expect(declared(names, s.name), `${where}: ${s.name} is no Loupe metric`).toBe(true);
          empty.add(`${s.name}${s.matchers}`);
          allHaveData = false;
          continue;
        }
        // Its target-label matchers (namespace, service, ...) select scraped series.
        const scoped = await prometheus!.query(`count(${targetOnly(s)})`);
        expect(scoped.length, `${where}: ${targetOnly(s)}`).toBe(1);
        if ((await prometheus!.query(`count(${s.name}${s.matchers})`)).length === 0) {
          empty.add(`${s.name}${s.matchers}`);
          allHaveData = false;
        }
      }
      // An alert stays empty while healthy: its expression left of the threshold is checked.
      const threshold = /^(.*\S)\s*(>|<|==|>=|<=|!=)\s*[0-9.e+-]+$/s.exec(expr);
      const shown = alert
        ? threshold
          ? await prometheus!.query(threshold[1]!)
          : undefined
        : result;
      if (shown === undefined || shown.length > 0) {
        withData++;
        continue;
      }
      // No data is right only where some selector has none.
      expect(allHaveData, `${where}: no data from ${expr}`).toBe(false);
    }
    const errorsOnly = /_failures_total|status=~"5\.\."|code!~"OK\|NOT_FOUND"/;
    expect([...empty].filter((s) => !errorsOnly.test(s))).toEqual([]);
    expect(withData).toBe(queries.length - 4); // the error-rate alert, failures by reason ×3
  });
});
