// A real Prometheus (Debian's `prometheus` package, or any on PATH) on loopback for tests, and
// the scrape targets the chart's ServiceMonitors would make, derived from the rendered chart.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { startProcess } from './service-process.js';

/** A binary on PATH that answers `args` (its version) with status 0, or undefined. */
export function findTool(name: string, args = ['--version']): string | undefined {
  const r = spawnSync(name, args, { encoding: 'utf8' });
  return r.status === 0 ? name : undefined;
}

interface K8sObject {
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
}

interface ServiceMonitorEndpoint {
  port?: string;
  path?: string;
  scheme?: string;
  interval?: string;
  honorLabels?: boolean;
  relabelings?: unknown[];
  metricRelabelings?: unknown[];
  [key: string]: unknown;
}

/** One scrape target as Prometheus's Kubernetes discovery, driven by a ServiceMonitor, makes it. */
export interface DerivedTarget {
  /** The ServiceMonitor. */
  monitor: string;
  /** The Service's app.kubernetes.io/component label (gateway, encoder, ...). */
  stage: string;
  /** The container port the endpoint's named Service port leads to. */
  containerPort: number;
  metricsPath: string;
  honorLabels: boolean;
  /** Target labels: job, namespace, service, endpoint, pod, container. */
  labels: Record<string, string>;
}

const matches = (selector: Record<string, string>, labels: Record<string, string> = {}) =>
  Object.entries(selector).every(([k, v]) => labels[k] === v);

/**
 * The targets the Prometheus operator configures for each ServiceMonitor endpoint, as its
 * generated `kubernetes_sd_configs` relabeling sets them: `job` = the Service's name (or its
 * `jobLabel` label), `namespace`, `service` = the Service's name, `pod`, `container`,
 * `endpoint` = the port's name; `honor_labels` from the endpoint (default false, so a scraped
 * label that collides with a target label, such as the application's `service`, is kept as
 * `exported_service`). Fields this derivation does not model (relabelings, metricRelabelings,
 * ...) throw, so the chart cannot grow one that the tests would silently ignore.
 */
export function serviceMonitorTargets(objects: K8sObject[], namespace: string): DerivedTarget[] {
  const services = objects.filter((o) => o.kind === 'Service');
  const deployments = objects.filter((o) => o.kind === 'Deployment');
  const targets: DerivedTarget[] = [];
  for (const monitor of objects.filter((o) => o.kind === 'ServiceMonitor')) {
    const spec = monitor.spec as {
      selector: { matchLabels: Record<string, string> };
      endpoints: ServiceMonitorEndpoint[];
      jobLabel?: string;
      namespaceSelector?: unknown;
      [key: string]: unknown;
    };
    const unsupported = Object.keys(spec).filter(
      (k) => !['selector', 'endpoints', 'jobLabel'].includes(k),
    );
    if (unsupported.length > 0)
      throw new Error(`ServiceMonitor ${monitor.metadata.name}: unmodelled ${unsupported}`);
    const selected = services.filter((s) => matches(spec.selector.matchLabels, s.metadata.labels));
    if (selected.length !== 1)
      throw new Error(
        `ServiceMonitor ${monitor.metadata.name} selects ${selected.length} Services`,
      );
    const service = selected[0]!;
    const serviceSpec = service.spec as {
      selector: Record<string, string>;
      ports: Array<{ name: string; port: number; targetPort: string | number }>;
    };
    const deployment = deployments.find((d) => {
      const labels = (d.spec as { template: { metadata: { labels: Record<string, string> } } })
        .template.metadata.labels;
      return matches(serviceSpec.selector, labels);
    });
    if (!deployment) throw new Error(`no Deployment behind Service ${service.metadata.name}`);
    const containers = (
      deployment.spec as {
        template: {
          spec: {
            containers: Array<{
              name: string;
              ports: Array<{ name: string; containerPort: number }>;
            }>;
          };
        };
      }
    ).template.spec.containers;
    for (const endpoint of spec.endpoints) {
      const extra = Object.keys(endpoint).filter(
        (k) => !['port', 'path', 'interval', 'honorLabels', 'scheme'].includes(k),
      );
      if (extra.length > 0)
        throw new Error(`ServiceMonitor ${monitor.metadata.name}: unmodelled endpoint ${extra}`);
      const servicePort = serviceSpec.ports.find((p) => p.name === endpoint.port);
      if (!servicePort)
        throw new Error(`Service ${service.metadata.name} has no port named ${endpoint.port}`);
      let found: { container: string; port: number } | undefined;
      for (const c of containers)
        for (const p of c.ports)
          if (p.name === servicePort.targetPort || p.containerPort === servicePort.targetPort)
            found = { container: c.name, port: p.containerPort };
      if (!found)
        throw new Error(`no container port for ${service.metadata.name}:${endpoint.port}`);
      const serviceName = service.metadata.name;
      targets.push({
        monitor: monitor.metadata.name,
        stage: service.metadata.labels?.['app.kubernetes.io/component'] ?? '',
        containerPort: found.port,
        metricsPath: endpoint.path ?? '/metrics',
        honorLabels: endpoint.honorLabels ?? false,
        labels: {
          job: spec.jobLabel
            ? (service.metadata.labels?.[spec.jobLabel] ?? serviceName)
            : serviceName,
          namespace: service.metadata.namespace ?? namespace,
          service: serviceName,
          endpoint: endpoint.port!,
          // Discovery names the real pod; any name does here (nothing selects on it).
          pod: `${deployment.metadata.name}-0`,
          container: found.container,
        },
      });
    }
  }
  return targets;
}

export interface PrometheusResult {
  metric: Record<string, string>;
  value: [number, string];
}

export interface RunningPrometheus {
  url: string;
  /** An instant query; throws on an error answer (a parse error, say). */
  query(expr: string): Promise<PrometheusResult[]>;
  /** The raw JSON of an API GET, e.g. /api/v1/rules. */
  api<T>(path: string): Promise<T>;
  /** Everything the process printed. */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts Prometheus on an ephemeral loopback port with `config` (as YAML) and the rule files
 * given (name → YAML), its TSDB in a temporary folder, and resolves once it logs that it is
 * ready (it marks itself ready, then logs so); the port is the one it logs listening on.
 */
export async function startPrometheus(
  binary: string,
  config: Record<string, unknown>,
  ruleFiles: Record<string, string> = {},
  timeoutMs = 30_000,
): Promise<RunningPrometheus> {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-prometheus-'));
  for (const [name, text] of Object.entries(ruleFiles)) writeFileSync(join(dir, name), text);
  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(
    configFile,
    stringify({ ...config, rule_files: Object.keys(ruleFiles).map((n) => join(dir, n)) }),
  );
  const p = await startProcess(binary, {
    args: [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      '--web.listen-address=127.0.0.1:0',
      // Info: the lines that say where it listens and that it is ready.
      '--log.level=info',
    ],
    ready: (line) => line.includes('Server is ready to receive web requests'),
    timeoutMs,
  }).catch((error: Error) => {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`prometheus did not become ready: ${error.message}`);
  });
  const stop = async () => {
    await p.stop(5_000);
    rmSync(dir, { recursive: true, force: true });
  };
  // "Listening on" names the address the ephemeral port resolved to.
  const listening = /msg="Listening on".*\baddress=(127\.0\.0\.1:\d+)/;
  let url: string;
  try {
    url = `http://${listening.exec(await p.waitForLine((l) => listening.test(l), 5_000))![1]}`;
  } catch (error) {
    await stop();
    throw error;
  }
  const api = async <T>(path: string): Promise<T> => {
    const r = await fetch(`${url}${path}`);
    const body = (await r.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`${path}: ${body.error ?? r.status}`);
    return body.data;
  };
  return {
    url,
    api,
    query: async (expr) => {
      const data = await api<{ resultType: string; result: PrometheusResult[] }>(
        `/api/v1/query?query=${encodeURIComponent(expr)}`,
      );
      if (data.resultType !== 'vector')
        throw new Error(`${expr}: a ${data.resultType}, not a vector`);
      return data.result;
    },
    output: () => p.lines.join('\n'),
    stop,
  };
}

/**
 * The vector selectors of a PromQL expression over Loupe's metrics and `up`: metric name
 * and matchers as written.
 */
export function selectors(expr: string): Array<{ name: string; matchers: string }> {
  const found: Array<{ name: string; matchers: string }> = [];
  for (const m of expr.matchAll(/\b(loupe_[a-z0-9_]+|up)\b(?!\s*\()(\{[^}]*\})?/g))
    found.push({ name: m[1]!, matchers: m[2] ?? '' });
  return found;
}

/** The same selector with only the matchers on target labels (those discovery sets). */
export function targetOnly(selector: { name: string; matchers: string }): string {
  const kept = [...selector.matchers.matchAll(/([a-z_]+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g)]
    .filter((m) => ['job', 'namespace', 'service', 'pod', 'container', 'endpoint'].includes(m[1]!))
    .map((m) => `${m[1]}${m[2]}"${m[3]}"`);
  return `${selector.name}{${kept.join(', ')}}`;
}
