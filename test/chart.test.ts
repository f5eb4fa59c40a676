// The Helm chart (charts/loupe) and the container images, checked offline. The chart checks
// need `helm` on PATH: without it they are skipped, saying so, except under CI=true, where
// a missing helm is a failure (.ci/run builds it from the Go module proxy).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { openCheckpoint, writeTinyModel } from '../services/model/index.js';
import { HubStandIn } from './helpers/hub-stand-in.js';
import { repoRoot } from './helpers/service-process.js';

const chart = join(repoRoot, 'charts', 'loupe');
const helm = spawnSync('helm', ['version', '--short'], { encoding: 'utf8' }).status === 0;
// tools/kubecheck, built by .ci/run into .ci/bin (or anywhere on PATH).
const kubecheck = [join(repoRoot, '.ci', 'bin', 'kubecheck'), 'kubecheck'].find(
  (bin) => spawnSync(bin, [], { encoding: 'utf8' }).status === 2,
);
const EXAMPLES = ['values-cpu-small', 'values-gpu', 'values-hub'];

interface K8sObject {
  kind: string;
  metadata: { name: string };
  spec?: Record<string, unknown> & {
    replicas?: number;
    template?: {
      spec: {
        containers: Array<{
          image: string;
          args: string[];
          resources?: { limits?: Record<string, unknown> };
        }>;
        nodeSelector?: Record<string, string>;
      };
    };
  };
}

function template(args: string[] = []): string {
  return execFileSync(
    'helm',
    ['template', 'demo', chart, '-n', 'loupe', '--kube-version', '1.30.0', ...args],
    {
      encoding: 'utf8',
    },
  );
}
const objects = (text: string) =>
  parseAllDocuments(text)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
const deployments = (text: string) => objects(text).filter((o) => o.kind === 'Deployment');
const helmError = (args: string[]) => {
  const r = spawnSync('helm', ['template', 'demo', chart, '--kube-version', '1.30.0', ...args], {
    encoding: 'utf8',
  });
  expect(r.status).not.toBe(0);
  return r.stderr;
};

describe('chart tools', () => {
  it('helm and kubecheck are there, or the chart checks are skipped (never under CI)', () => {
    for (const [name, found, how] of [
      ['helm', helm, 'go install helm.sh/helm/v3/cmd/helm@v3.22.0'],
      [
        'kubecheck',
        kubecheck !== undefined,
        '(cd tools/kubecheck && go build -o ../../.ci/bin/kubecheck .)',
      ],
    ] as const) {
      if (found) continue;
      if (process.env.CI === 'true')
        throw new Error(`CI=true but ${name} is missing (.ci/run builds it)`);
      console.warn(`chart checks SKIPPED: ${name} is missing (${how})`);
    }
  });
});

describe.runIf(kubecheck !== undefined)('rendered objects against the Kubernetes API types', () => {
  it('validates every built-in object of the committed renders', () => {
    const files = EXAMPLES.map((name) => join(chart, 'examples', 'rendered', `${name}.yaml`));
    const out = execFileSync(kubecheck!, files, { encoding: 'utf8' });
    expect(out).toMatch(/kubecheck: \d+ objects valid, 0 invalid/);
  });

  it.runIf(helm)('validates renders with the optional parts switched on', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loupe-kubecheck-'));
    try {
      const variants = [
        ['--set', 'model.source=hf://org/name@rev', '--set', 'model.fetch.convert.enabled=true'],
        ['--set', 'model.source=hf://org/name@rev', '--set', 'model.fetch.mode=job'],
        [
          ...[
            '--set',
            'gateway.ingress.enabled=true',
            '--set',
            'gateway.ingress.tls[0].secretName=t',
          ],
          ...['--set', 'otel.endpoint=http://collector.obs:4318', '--set', 'priorityClassName=p'],
          ...['--set', 'extraEnv[0].name=A', '--set-string', 'extraEnv[0].value=1'],
          ...[
            '--set',
            'decoder.extraVolumes[0].name=v',
            '--set',
            'decoder.extraVolumes[0].emptyDir.medium=Memory',
          ],
          ...[
            '--set',
            'decoder.extraVolumeMounts[0].name=v',
            '--set',
            'decoder.extraVolumeMounts[0].mountPath=/v',
          ],
          ...['--set', 'networkPolicy.egress.apiServer.cidrs={10.0.0.1/32}'],
          ...['--set', 'networkPolicy.egress.imageFetch.cidrs={203.0.113.0/24}'],
          ...['--set', 'decoder.pdb.minAvailable=1', '--set', 'apiKeys.keys={sk-kubecheck}'],
        ],
      ];
      const files = variants.map((args, i) => {
        const file = join(dir, `variant-${i}.yaml`);
        writeFileSync(file, template(args));
        return file;
      });
      const out = execFileSync(kubecheck!, files, { encoding: 'utf8' });
      expect(out).toMatch(/kubecheck: \d+ objects valid, 0 invalid/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails on a misspelled field or a wrong type, naming the object', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loupe-kubecheck-'));
    try {
      const bad = join(dir, 'bad.yaml');
      writeFileSync(
        bad,
        [
          'apiVersion: apps/v1',
          'kind: Deployment',
          'metadata: { name: oops }',
          'spec:',
          '  replica: 2',
          '  selector: { matchLabels: { a: b } }',
          '  template: { metadata: { labels: { a: b } }, spec: { containers: [{ name: c, image: i }] } }',
          '---',
          'apiVersion: v1',
          'kind: Service',
          'metadata: { name: typo }',
          'spec: { ports: [{ port: "eighty" }] }',
          '',
        ].join('\n'),
      );
      const r = spawnSync(kubecheck!, [bad], { encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stdout).toMatch(/Deployment oops: .*unknown field "spec.replica"/);
      expect(r.stdout).toMatch(/Service typo: /);
      expect(r.stdout).toMatch(/0 objects valid, 2 invalid/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.runIf(helm)('chart', () => {
  it.each(EXAMPLES)('lints and renders %s exactly as committed', (name) => {
    const values = join(chart, 'examples', `${name}.yaml`);
    execFileSync('helm', ['lint', chart, '-f', values, '--kube-version', '1.30.0'], {
      encoding: 'utf8',
    });
    const rendered = template(['-f', values]);
    expect(rendered).toBe(
      readFileSync(join(chart, 'examples', 'rendered', `${name}.yaml`), 'utf8'),
    );
    for (const o of objects(rendered)) {
      expect(o.kind, JSON.stringify(o).slice(0, 80)).toMatch(/^[A-Z]/);
      expect(o.metadata.name).toMatch(/^[a-z0-9-]{1,63}$/);
    }
  });

  it('renders nothing for a stage switched off', () => {
    const names = (args: string[]) =>
      deployments(template(args))
        .map((d) => d.metadata.name)
        .sort();
    expect(names([])).toEqual([
      'demo-loupe-decoder',
      'demo-loupe-encoder',
      'demo-loupe-gateway',
      'demo-loupe-preprocessor',
    ]);
    expect(names(['--set', 'gateway.enabled=false'])).toEqual([
      'demo-loupe-decoder',
      'demo-loupe-encoder',
      'demo-loupe-preprocessor',
    ]);
    expect(names(['--set', 'gateway.enabled=false', '--set', 'encoder.enabled=false'])).toEqual([
      'demo-loupe-decoder',
      'demo-loupe-preprocessor',
    ]);
    const off = objects(
      template(['--set', 'gateway.enabled=false', '--set', 'encoder.enabled=false']),
    );
    expect(off.filter((o) => o.metadata.name.endsWith('-encoder'))).toEqual([]);
  });

  it('drops replicas where an autoscaler owns the Deployment, for either provider', () => {
    for (const provider of ['keda', 'hpa']) {
      const text = template([
        '--set',
        `autoscalingProvider=${provider}`,
        '--set',
        'decoder.autoscaling.enabled=true',
        '--set',
        'gateway.autoscaling.enabled=true',
      ]);
      const byName = new Map(deployments(text).map((d) => [d.metadata.name, d]));
      expect(byName.get('demo-loupe-decoder')!.spec!.replicas).toBeUndefined();
      expect(byName.get('demo-loupe-gateway')!.spec!.replicas).toBeUndefined();
      expect(byName.get('demo-loupe-encoder')!.spec!.replicas).toBe(1);
      const scalers = objects(text).filter(
        (o) => o.kind === 'ScaledObject' || o.kind === 'HorizontalPodAutoscaler',
      );
      expect(scalers.map((o) => `${o.kind} ${o.metadata.name}`).sort()).toEqual(
        provider === 'keda'
          ? ['HorizontalPodAutoscaler demo-loupe-gateway', 'ScaledObject demo-loupe-decoder']
          : [
              'HorizontalPodAutoscaler demo-loupe-decoder',
              'HorizontalPodAutoscaler demo-loupe-gateway',
            ],
      );
    }
  });

  it('requests a GPU, the CUDA image and GPU nodes for the encoder and decoder only', () => {
    for (const d of deployments(template())) {
      const pod = d.spec!.template!.spec;
      const gpu = d.metadata.name.endsWith('encoder') || d.metadata.name.endsWith('decoder');
      expect([d.metadata.name, pod.containers[0]!.resources?.limits?.['nvidia.com/gpu']]).toEqual([
        d.metadata.name,
        gpu ? 1 : undefined,
      ]);
      expect(pod.containers[0]!.image.includes('loupe-cuda')).toBe(gpu);
      expect(pod.nodeSelector?.['nvidia.com/gpu.present'] === 'true').toBe(gpu);
    }
  });

  it('adds ServiceMonitors when asked, or when the Prometheus operator is there', () => {
    const monitors = (args: string[]) =>
      objects(template(args)).filter((o) => o.kind === 'ServiceMonitor').length;
    expect(monitors([])).toBe(0);
    expect(monitors(['--api-versions', 'monitoring.coreos.com/v1'])).toBe(4);
    expect(
      monitors([
        '--api-versions',
        'monitoring.coreos.com/v1',
        '--set',
        'serviceMonitor.enabled=false',
      ]),
    ).toBe(0);
    expect(monitors(['--set', 'serviceMonitor.enabled=true'])).toBe(4);
    // The gateway's too, on its own metrics port (named `metrics`, apart from the API).
    const gateway = objects(template(['--set', 'serviceMonitor.enabled=true'])).find(
      (o) => o.kind === 'ServiceMonitor' && o.metadata.name === 'demo-loupe-gateway',
    )!;
    expect(gateway.spec!.endpoints).toEqual([
      { port: 'metrics', interval: '15s', honorLabels: false },
    ]);
  });

  it('with grpc.tls on, mounts the Secret, sets the TLS variables and probes the health port', () => {
    interface Container {
      env: Array<{ name: string; value?: string }>;
      ports: Array<{ name: string; containerPort: number }>;
      volumeMounts: Array<Record<string, unknown>>;
      startupProbe: { grpc?: { port: number } };
      readinessProbe: { grpc?: { port: number; service?: string } };
    }
    const pods = (args: string[]) =>
      deployments(template(args)).map((d) => {
        const pod = d.spec!.template!.spec as unknown as {
          containers: Container[];
          volumes: Array<Record<string, unknown>>;
        };
        const c = pod.containers[0]!;
        const env = Object.fromEntries(c.env.map((e) => [e.name, e.value]));
        return {
          name: d.metadata.name,
          stage: d.metadata.name.replace('demo-loupe-', ''),
          pod,
          c,
          env,
        };
      });
    const on = pods([
      '--set',
      'grpc.tls.enabled=true',
      '--set',
      'grpc.tls.secretName=loupe-grpc-tls',
    ]);
    expect(on.length).toBe(4);
    for (const { name, stage, pod, c, env } of on) {
      expect(pod.volumes, name).toContainEqual({
        name: 'grpc-tls',
        secret: { secretName: 'loupe-grpc-tls', defaultMode: 0o440 },
      });
      expect(c.volumeMounts, name).toContainEqual({
        name: 'grpc-tls',
        mountPath: '/etc/loupe/grpc-tls',
        readOnly: true,
      });
      expect(env.LOUPE_GRPC_TLS_CERT_FILE).toBe('/etc/loupe/grpc-tls/tls.crt');
      expect(env.LOUPE_GRPC_TLS_KEY_FILE).toBe('/etc/loupe/grpc-tls/tls.key');
      expect(env.LOUPE_GRPC_TLS_CA_FILE).toBe('/etc/loupe/grpc-tls/ca.crt');
      if (stage === 'gateway') {
        // It dials pod IPs: the certificate is checked against the Service name instead.
        expect(env.LOUPE_GRPC_TLS_SERVER_NAME).toBe('demo-loupe-preprocessor.loupe.svc');
        expect(env.LOUPE_GRPC_HEALTH_PORT).toBeUndefined();
        continue;
      }
      expect(env.LOUPE_GRPC_HEALTH_PORT, name).toBe('50050');
      expect(c.ports, name).toContainEqual({ name: 'grpc-health', containerPort: 50050 });
      expect(c.startupProbe.grpc, name).toEqual({ port: 50050 });
      expect(c.readinessProbe.grpc, name).toEqual({
        port: 50050,
        service: `loupe.v1.${stage[0]!.toUpperCase()}${stage.slice(1)}`,
      });
    }
    // Off (the default): plaintext, no Secret, probes on the gRPC port.
    for (const { name, stage, pod, c, env } of pods([])) {
      expect(
        Object.keys(env).filter((k) => k.startsWith('LOUPE_GRPC_')),
        name,
      ).toEqual([]);
      expect(
        pod.volumes.map((v) => v.name),
        name,
      ).not.toContain('grpc-tls');
      if (stage !== 'gateway') {
        const port = c.ports.find((p) => p.name === 'grpc')!.containerPort;
        expect(c.readinessProbe.grpc?.port, name).toBe(port);
      }
    }
    expect(helmError(['--set', 'grpc.tls.enabled=true'])).toMatch(
      /grpc\.tls\.enabled needs grpc\.tls\.secretName/,
    );
    expect(
      helmError([
        '--set',
        'grpc.tls.enabled=true',
        '--set',
        'grpc.tls.secretName=s',
        '--set',
        'grpc.tls.healthPort=50053',
      ]),
    ).toMatch(/grpc\.tls\.healthPort \(50053\) must differ from decoder\.port/);
  });

  it('refuses wrong values with a readable message', () => {
    expect(helmError(['--set', 'model.source=s3'])).toMatch(/model\.source|source/);
    expect(helmError(['--set', 'model.source=hf://org/name'])).toMatch(/with the revision pinned/);
    expect(helmError(['--set', 'decoder.port=70000'])).toMatch(/port/);
    expect(
      helmError([
        '--set',
        'decoder.autoscaling.enabled=true',
        '--set',
        'decoder.autoscaling.minReplicas=4',
        '--set',
        'decoder.autoscaling.maxReplicas=2',
      ]),
    ).toMatch(/decoder\.autoscaling\.maxReplicas \(2\) must be >= minReplicas \(4\)/);
    expect(helmError(['--set', 'encoder.enabled=false'])).toMatch(
      /gateway\.enabled needs preprocessor\.enabled, encoder\.enabled and decoder\.enabled/,
    );
  });
});

interface Container {
  name: string;
  command?: string[];
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: Record<string, unknown> }>;
  volumeMounts?: Array<Record<string, unknown>>;
  readinessProbe?: { httpGet?: { path: string }; timeoutSeconds?: number };
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  securityContext?: Record<string, unknown>;
  resources?: Record<string, unknown>;
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Array<Record<string, unknown>>;
  terminationGracePeriodSeconds?: number;
  priorityClassName?: string;
  securityContext?: Record<string, unknown>;
  topologySpreadConstraints?: Array<Record<string, unknown>>;
}
interface Rendered {
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
  stringData?: Record<string, string>;
}
const all = (args: string[] = []) => objects(template(args)) as unknown as Rendered[];
const named = (list: Rendered[], kind: string, name: string) =>
  list.find((o) => o.kind === kind && o.metadata.name === name);
const podOf = (o: Rendered) =>
  (o.spec as { template: { spec: PodSpec; metadata: { annotations?: Record<string, string> } } })
    .template;
const envOf = (c: Container) =>
  Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]));
const STAGES = ['gateway', 'preprocessor', 'encoder', 'decoder'];
/** NOTES.txt as `helm install` prints it (rendered through a probe template in a copy). */
function notes(args: string[] = []): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-notes-'));
  try {
    cpSync(chart, join(dir, 'loupe'), { recursive: true });
    writeFileSync(
      join(dir, 'loupe', 'templates', 'notes-probe.yaml'),
      'notes: {{ include "loupe/templates/NOTES.txt" . | toJson }}\n',
    );
    const out = execFileSync(
      'helm',
      [
        'template',
        'demo',
        join(dir, 'loupe'),
        '-n',
        'loupe',
        '--kube-version',
        '1.30.0',
        ...args,
      ].concat(['--show-only', 'templates/notes-probe.yaml']),
      { encoding: 'utf8' },
    );
    return (parseAllDocuments(out)[0]!.toJS() as { notes: string }).notes;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.runIf(helm)('chart: renders that start, and operate', () => {
  it('generates an API key when none is given (NOTES says how to read it), or refuses when told to', () => {
    const list = all();
    const secret = named(list, 'Secret', 'demo-loupe-api-keys')!;
    expect(secret.metadata.annotations).toEqual({ 'loupe.dev/api-key': 'generated' });
    expect(secret.stringData!['api-keys']).toMatch(/^sk-loupe-[A-Za-z0-9]{40}$/);
    expect(secret.stringData!['test-key']).toBe(secret.stringData!['api-keys']);
    const gateway = podOf(named(list, 'Deployment', 'demo-loupe-gateway')!);
    expect(envOf(gateway.spec.containers[0]!).LOUPE_GATEWAY_API_KEYS).toEqual({
      secretKeyRef: { name: 'demo-loupe-api-keys', key: 'api-keys' },
    });
    expect(gateway.metadata.annotations?.['checksum/api-keys']).toMatch(/^[0-9a-f]{16}$/);
    expect(notes()).toContain(
      "kubectl -n loupe get secret demo-loupe-api-keys -o jsonpath='{.data.api-keys}' | base64 -d",
    );
    expect(notes()).toContain('the chart generated one');

    const given = named(
      all(['--set', 'apiKeys.keys={sk-first-key,sk-second-key}']),
      'Secret',
      'demo-loupe-api-keys',
    )!;
    expect(given.metadata.annotations).toBeUndefined();
    expect(given.stringData).toEqual({
      'api-keys': 'sk-first-key,sk-second-key',
      'test-key': 'sk-first-key',
    });

    const existing = all(['--set', 'apiKeys.existingSecret=mine']);
    expect(existing.filter((o) => o.kind === 'Secret')).toEqual([]);
    expect(
      podOf(named(existing, 'Deployment', 'demo-loupe-gateway')!).metadata.annotations,
    ).toBeUndefined();
    expect(notes(['--set', 'apiKeys.existingSecret=mine'])).toContain('from your Secret mine');

    expect(helmError(['--set', 'apiKeys.generate=false'])).toMatch(
      /exits at start without API keys: set apiKeys\.keys, apiKeys\.existingSecret, or apiKeys\.generate=true/,
    );
    // No gateway, no keys needed.
    expect(
      template(['--set', 'apiKeys.generate=false', '--set', 'gateway.enabled=false']),
    ).not.toContain('kind: Secret');
  });

  it('PDBs let one pod of each stage go at a time, so a one-replica stage can still be drained', () => {
    const pdbs = all().filter((o) => o.kind === 'PodDisruptionBudget');
    expect(
      pdbs.map((p) => [p.metadata.name, p.spec!.maxUnavailable, p.spec!.minAvailable]),
    ).toEqual(STAGES.map((s) => [`demo-loupe-${s}`, 1, undefined]));
    const decoder = named(
      all(['--set', 'decoder.pdb.minAvailable=1']),
      'PodDisruptionBudget',
      'demo-loupe-decoder',
    )!;
    expect([decoder.spec!.minAvailable, decoder.spec!.maxUnavailable]).toEqual([1, undefined]);
  });

  it('gateway readiness is /readyz, timed out well above its own 0.5 s stage checks; every pod pauses, then drains within its grace period', () => {
    const list = all();
    const gateway = podOf(named(list, 'Deployment', 'demo-loupe-gateway')!).spec.containers[0]!;
    expect(gateway.readinessProbe?.httpGet?.path).toBe('/readyz');
    expect(gateway.readinessProbe!.timeoutSeconds).toBeGreaterThanOrEqual(2);
    for (const stage of STAGES) {
      const pod = podOf(named(list, 'Deployment', `demo-loupe-${stage}`)!).spec;
      const c = pod.containers[0]!;
      expect(c.lifecycle?.preStop?.exec?.command, stage).toEqual(['sleep', '5']);
      const graceMs = Number(envOf(c).LOUPE_SHUTDOWN_GRACE_MS);
      expect(graceMs, stage).toBe(45_000);
      // The kubelet's deadline covers the pause, the drain, and time to close.
      expect(pod.terminationGracePeriodSeconds! * 1000).toBeGreaterThan(5_000 + graceMs);
    }
    const longer = podOf(
      named(
        all(['--set', 'preStopSleepSeconds=10', '--set', 'terminationGracePeriodSeconds=120']),
        'Deployment',
        'demo-loupe-decoder',
      )!,
    ).spec;
    expect(longer.containers[0]!.lifecycle?.preStop?.exec?.command).toEqual(['sleep', '10']);
    expect(envOf(longer.containers[0]!).LOUPE_SHUTDOWN_GRACE_MS).toBe('100000');
    expect(
      helmError(['--set', 'terminationGracePeriodSeconds=15', '--set', 'preStopSleepSeconds=5']),
    ).toMatch(
      /terminationGracePeriodSeconds \(15\) must exceed preStopSleepSeconds \(5\) \+ 10 s by at least 5 s/,
    );
  });

  it('the Ingress: TLS, a body limit just above the gateway’s own, stream-friendly timeouts, overridable annotations', () => {
    const list = all([
      '--set',
      'gateway.ingress.enabled=true',
      '--set',
      'gateway.ingress.tls[0].secretName=loupe-tls',
      '--set',
      'gateway.maxBodyBytes=10485760',
      '--set-string',
      'gateway.ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/proxy-read-timeout=900',
      '--set-string',
      'gateway.ingress.annotations.cert-manager\\.io/cluster-issuer=le',
    ]);
    const ingress = named(list, 'Ingress', 'demo-loupe-gateway')!;
    expect(ingress.spec!.tls).toEqual([{ secretName: 'loupe-tls', hosts: ['loupe.example.com'] }]);
    expect(ingress.metadata.annotations).toEqual({
      'cert-manager.io/cluster-issuer': 'le',
      'nginx.ingress.kubernetes.io/proxy-body-size': '11264k',
      'nginx.ingress.kubernetes.io/proxy-buffering': 'off',
      'nginx.ingress.kubernetes.io/proxy-request-buffering': 'off',
      'nginx.ingress.kubernetes.io/proxy-read-timeout': '900',
      'nginx.ingress.kubernetes.io/proxy-send-timeout': '600',
    });
    const gateway = podOf(named(list, 'Deployment', 'demo-loupe-gateway')!).spec.containers[0]!;
    expect(envOf(gateway).LOUPE_GATEWAY_MAX_BODY_BYTES).toBe('10485760');
  });

  it('egress: the stages reach only DNS (and the OTLP port when set); the gateway also the stages, the API server and image URLs', () => {
    type Rule = {
      to?: Array<Record<string, unknown>>;
      ports?: Array<{ protocol: string; port: number }>;
    };
    const egress = (list: Rendered[], stage: string) => {
      const policy = named(list, 'NetworkPolicy', `demo-loupe-${stage}`);
      return (
        policy && {
          types: policy.spec!.policyTypes as string[],
          rules: (policy.spec!.egress ?? []) as Rule[],
        }
      );
    };
    const ports = (rules: Rule[]) =>
      rules.flatMap((r) => (r.ports ?? []).map((p) => `${p.protocol}/${p.port}`));
    const dns = ['UDP/53', 'TCP/53'];
    const list = all();
    for (const stage of ['preprocessor', 'encoder', 'decoder']) {
      const e = egress(list, stage)!;
      expect(e.types, stage).toEqual(['Ingress', 'Egress']);
      expect(ports(e.rules), stage).toEqual(dns);
      expect(e.rules[0]!.to).toEqual([
        {
          namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kube-system' } },
          podSelector: { matchLabels: { 'k8s-app': 'kube-dns' } },
        },
      ]);
    }
    const gateway = egress(list, 'gateway')!;
    expect(gateway.types).toEqual(['Egress']);
    expect(ports(gateway.rules)).toEqual([
      ...dns,
      'TCP/50051',
      'TCP/50052',
      'TCP/50053',
      'TCP/443',
      'TCP/6443',
      'TCP/80',
      'TCP/443',
    ]);
    expect(gateway.rules[1]!.to).toEqual([
      {
        podSelector: {
          matchLabels: {
            'app.kubernetes.io/name': 'loupe',
            'app.kubernetes.io/instance': 'demo',
            'app.kubernetes.io/component': 'preprocessor',
          },
        },
      },
    ]);
    const images = gateway.rules.at(-1)!.to!;
    expect(images[0]).toEqual({
      ipBlock: {
        cidr: '0.0.0.0/0',
        except: [
          '10.0.0.0/8',
          '172.16.0.0/12',
          '192.168.0.0/16',
          '169.254.0.0/16',
          '100.64.0.0/10',
        ],
      },
    });
    expect(images[1]).toEqual({ ipBlock: { cidr: '::/0', except: ['fc00::/7', 'fe80::/10'] } });

    const otel = all(['--set', 'otel.endpoint=http://otel-collector.observability:4318']);
    expect(ports(egress(otel, 'decoder')!.rules)).toEqual([...dns, 'TCP/4318']);
    expect(
      ports(egress(all(['--set', 'otel.endpoint=https://otel.example.com']), 'decoder')!.rules),
    ).toEqual([...dns, 'TCP/443']);
    const narrowed = all([
      '--set',
      'networkPolicy.egress.imageFetch.cidrs={203.0.113.0/24}',
      '--set',
      'networkPolicy.egress.imageFetch.ports={443}',
      '--set',
      'networkPolicy.egress.apiServer.cidrs={10.0.0.1/32}',
    ]);
    const rules = egress(narrowed, 'gateway')!.rules;
    expect(rules.at(-2)).toEqual({
      ports: [
        { protocol: 'TCP', port: 443 },
        { protocol: 'TCP', port: 6443 },
      ],
      to: [{ ipBlock: { cidr: '10.0.0.1/32' } }],
    });
    expect(rules.at(-1)).toEqual({
      to: [{ ipBlock: { cidr: '203.0.113.0/24' } }],
      ports: [{ protocol: 'TCP', port: 443 }],
    });
    const noImages = egress(
      all(['--set', 'networkPolicy.egress.imageFetch.enabled=false']),
      'gateway',
    )!;
    expect(ports(noImages.rules)).not.toContain('TCP/80');
    const off = all(['--set', 'networkPolicy.egress.enabled=false']);
    expect(egress(off, 'gateway')).toBeUndefined();
    expect(egress(off, 'decoder')!.types).toEqual(['Ingress']);
  });

  it('scheduling and pod settings from values: spread, priority class, extra env, volumes and mounts, security contexts', () => {
    const list = all([
      '--set',
      'priorityClassName=loupe-high',
      '--set',
      'decoder.priorityClassName=loupe-gpu',
      '--set',
      'extraEnv[0].name=EVERYWHERE',
      '--set-string',
      'extraEnv[0].value=1',
      '--set',
      'encoder.extraEnv[0].name=NODE_OPTIONS',
      '--set',
      'encoder.extraEnv[0].value=--max-old-space-size=4096',
      '--set',
      'encoder.extraVolumes[0].name=scratch',
      '--set',
      'encoder.extraVolumes[0].emptyDir.medium=Memory',
      '--set',
      'encoder.extraVolumeMounts[0].name=scratch',
      '--set',
      'encoder.extraVolumeMounts[0].mountPath=/scratch',
      '--set',
      'podSecurityContext.runAsUser=2000',
      '--set',
      'encoder.containerSecurityContext.readOnlyRootFilesystem=false',
      '--set',
      'decoder.topologySpreadConstraints[0].maxSkew=2',
      '--set',
      'decoder.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone',
      '--set',
      'decoder.topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule',
    ]);
    const pods = Object.fromEntries(
      STAGES.map((s) => [s, podOf(named(list, 'Deployment', `demo-loupe-${s}`)!).spec]),
    );
    expect(STAGES.map((s) => pods[s]!.priorityClassName)).toEqual([
      'loupe-high',
      'loupe-high',
      'loupe-high',
      'loupe-gpu',
    ]);
    for (const s of STAGES) {
      expect(envOf(pods[s]!.containers[0]!).EVERYWHERE, s).toBe('1');
      expect(pods[s]!.securityContext, s).toEqual({
        runAsNonRoot: true,
        runAsUser: 2000,
        fsGroup: 1000,
        seccompProfile: { type: 'RuntimeDefault' },
      });
      expect(pods[s]!.containers[0]!.securityContext?.readOnlyRootFilesystem, s).toBe(
        s !== 'encoder',
      );
      expect(pods[s]!.containers[0]!.securityContext?.capabilities, s).toEqual({ drop: ['ALL'] });
    }
    const encoder = pods.encoder!;
    expect(envOf(encoder.containers[0]!).NODE_OPTIONS).toBe('--max-old-space-size=4096');
    expect(encoder.volumes).toContainEqual({ name: 'scratch', emptyDir: { medium: 'Memory' } });
    expect(encoder.containers[0]!.volumeMounts).toContainEqual({
      name: 'scratch',
      mountPath: '/scratch',
    });
    // A spread constraint without a labelSelector gets the stage's own.
    const selector = (stage: string) => ({
      matchLabels: {
        'app.kubernetes.io/name': 'loupe',
        'app.kubernetes.io/instance': 'demo',
        'app.kubernetes.io/component': stage,
      },
    });
    expect(pods.gateway!.topologySpreadConstraints).toEqual([
      {
        maxSkew: 1,
        topologyKey: 'kubernetes.io/hostname',
        whenUnsatisfiable: 'ScheduleAnyway',
        labelSelector: selector('gateway'),
      },
    ]);
    expect(pods.decoder!.topologySpreadConstraints).toEqual([
      {
        maxSkew: 2,
        topologyKey: 'topology.kubernetes.io/zone',
        whenUnsatisfiable: 'DoNotSchedule',
        labelSelector: selector('decoder'),
      },
    ]);
    expect(pods.encoder!.topologySpreadConstraints).toBeUndefined();
    expect(helmError(['--set', 'decoder.topologySpreadConstraints[0].maxSkew=1'])).toMatch(
      /topologyKey|whenUnsatisfiable/,
    );
    expect(
      helmError([
        '--set',
        'extraVolumeMounts[0].name=x',
        '--set',
        'extraVolumeMounts[0].mountPath=relative',
      ]),
    ).toMatch(/mountPath/);
  });

  const HF = 'hf://HuggingFaceM4/idefics2-8b@0123abc';
  it('model.source hf://, mode pod: each pod fetches once at start into its emptyDir, with the Hub token and the convert', () => {
    const list = all([
      '--set',
      `model.source=${HF}`,
      '--set',
      'model.fetch.tokenSecret.name=hf-token',
      '--set',
      'model.fetch.convert.enabled=true',
    ]);
    const dirs = new Set<string>();
    for (const stage of STAGES) {
      const pod = podOf(named(list, 'Deployment', `demo-loupe-${stage}`)!).spec;
      expect(
        pod.initContainers!.map((c) => c.name),
        stage,
      ).toEqual(['fetch-model']);
      const init = pod.initContainers![0]!;
      expect(init.command).toEqual(['/bin/sh', '-c']);
      const script = init.args![0]!;
      expect(script).toContain(
        'node bin/loupe.js download \'HuggingFaceM4/idefics2-8b@0123abc\' --out "$dir/download"',
      );
      expect(script).toContain(
        'node bin/loupe.js convert --model "$dir/download" --out "$dir/model" --force --bits 4 --group-size 128',
      );
      expect(envOf(init).HF_TOKEN).toEqual({ secretKeyRef: { name: 'hf-token', key: 'token' } });
      expect(pod.volumes).toContainEqual({ name: 'model', emptyDir: { sizeLimit: '80Gi' } });
      const modelDir = envOf(pod.containers[0]!).LOUPE_MODEL_DIR as string;
      expect(modelDir).toMatch(/^\/models\/hf-[0-9a-f]{12}\/model$/);
      expect(script).toContain(`dir='${modelDir.replace(/\/model$/, '')}'`);
      dirs.add(modelDir);
      // The stage itself reads the checkpoint only.
      expect(pod.containers[0]!.volumeMounts).toContainEqual({
        name: 'model',
        mountPath: '/models',
        readOnly: true,
      });
      // Its pods may reach the Hub (the fetch runs in them).
      const policy = named(list, 'NetworkPolicy', `demo-loupe-${stage}`)!;
      expect(JSON.stringify(policy.spec!.egress)).toContain('"cidr":"0.0.0.0/0"');
    }
    expect(dirs.size).toBe(1);
    // Another revision, or other convert settings: another folder.
    const other = podOf(
      named(
        all(['--set', 'model.source=hf://HuggingFaceM4/idefics2-8b@4567def']),
        'Deployment',
        'demo-loupe-decoder',
      )!,
    ).spec;
    expect(dirs.has(envOf(other.containers[0]!).LOUPE_MODEL_DIR as string)).toBe(false);
    expect(helmError(['--set', 'model.source=hf://HuggingFaceM4/idefics2-8b'])).toMatch(
      /model\.source/,
    );
    expect(
      helmError([
        '--set',
        `model.source=${HF}`,
        '--set',
        'model.fetch.convert.enabled=true',
        '--set',
        'model.fetch.convert.bits=null',
      ]),
    ).toMatch(/model\.fetch\.convert\.enabled needs bits/);
    expect(helmError(['--set', `model.source=${HF}`, '--set', 'model.fetch.mode=daemon'])).toMatch(
      /mode/,
    );
  });

  it('model.source hf://, mode job: one Job fills a kept claim every pod mounts read-only, and the pods wait for it', () => {
    const list = all(['--set', `model.source=${HF}`, '--set', 'model.fetch.mode=job']);
    const jobs = list.filter((o) => o.kind === 'Job');
    expect(jobs.map((j) => j.metadata.name)).toEqual([
      expect.stringMatching(/^demo-loupe-fetch-model-[0-9a-f]{8}$/),
    ]);
    const job = podOf(jobs[0]!).spec as PodSpec & { restartPolicy: string };
    expect(job.restartPolicy).toBe('OnFailure');
    expect(job.volumes).toContainEqual({
      name: 'model',
      persistentVolumeClaim: { claimName: 'demo-loupe-model' },
    });
    expect(job.containers[0]!.args![0]).toContain('node bin/loupe.js download');
    const claim = named(list, 'PersistentVolumeClaim', 'demo-loupe-model')!;
    expect(claim.metadata.annotations).toEqual({ 'helm.sh/resource-policy': 'keep' });
    expect(claim.spec).toEqual({
      accessModes: ['ReadWriteMany'],
      resources: { requests: { storage: '100Gi' } },
    });
    for (const stage of STAGES) {
      const pod = podOf(named(list, 'Deployment', `demo-loupe-${stage}`)!).spec;
      expect(pod.initContainers!.map((c) => c.name)).toEqual(['wait-for-model']);
      expect(pod.initContainers![0]!.args![0]).toMatch(/until \[ -f "\$dir\/complete" \]/);
      expect(pod.initContainers![0]!.args![0]).not.toContain('loupe.js');
      expect(pod.volumes).toContainEqual({
        name: 'model',
        persistentVolumeClaim: { claimName: 'demo-loupe-model', readOnly: true },
      });
      // Only the Job reaches the Hub.
      expect(
        JSON.stringify(named(list, 'NetworkPolicy', `demo-loupe-${stage}`)!.spec!.egress),
      ).not.toContain('0.0.0.0/0"}');
    }
    expect(named(list, 'NetworkPolicy', 'demo-loupe-fetch-model')!.spec!.policyTypes).toEqual([
      'Ingress',
      'Egress',
    ]);
    const existing = all([
      '--set',
      `model.source=${HF}`,
      '--set',
      'model.fetch.mode=job',
      '--set',
      'model.fetch.pvc.existingClaim=models',
    ]);
    expect(existing.filter((o) => o.kind === 'PersistentVolumeClaim')).toEqual([]);
    expect(notes(['--set', `model.source=${HF}`, '--set', 'model.fetch.mode=job'])).toMatch(
      /kubectl -n loupe logs job\/demo-loupe-fetch-model-[0-9a-f]{8} -f/,
    );
  });

  it('the rendered fetch script downloads and converts from a Hub stand-in into a loadable checkpoint, once', async () => {
    const work = mkdtempSync(join(tmpdir(), 'loupe-chart-fetch-'));
    const source = join(work, 'source');
    writeTinyModel({ out: source, seed: 0 });
    const token = 'hf_chartFetchToken0123456789';
    const hub = await new HubStandIn({
      repos: {
        'loupe-test/tiny': { dir: source, commit: 'c0ffee0000000000000000000000000000000002' },
      },
      token,
    }).start();
    try {
      const list = all([
        '--set',
        'model.source=hf://loupe-test/tiny@main',
        '--set',
        `model.mountPath=${join(work, 'models')}`,
        '--set',
        `model.fetch.endpoint=${hub.url}`,
        '--set',
        'model.fetch.tokenSecret.name=hf-token',
        '--set',
        'model.fetch.convert.enabled=true',
        '--set',
        'model.fetch.convert.bits=8',
        '--set',
        'model.fetch.convert.groupSize=32',
      ]);
      const pod = podOf(named(list, 'Deployment', 'demo-loupe-decoder')!).spec;
      const init = pod.initContainers![0]!;
      const env = envOf(init);
      // Asynchronously: the Hub stand-in answers from this process's event loop.
      const run = () =>
        new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(init.command![0]!, [...init.command!.slice(1), ...init.args!], {
            cwd: repoRoot, // the image's WORKDIR holds bin/loupe.js, as the repository does
            env: {
              ...process.env,
              HOME: work,
              HF_ENDPOINT: env.HF_ENDPOINT as string,
              HF_TOKEN: token,
            },
          });
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
          child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
          child.once('close', (status) => resolve({ status, stdout, stderr }));
        });
      const first = await run();
      expect(first.status, first.stdout + first.stderr).toBe(0);
      expect(first.stdout).toMatch(/loupe: fetching loupe-test\/tiny@main into/);
      const modelDir = envOf(pod.containers[0]!).LOUPE_MODEL_DIR as string;
      expect(openCheckpoint(modelDir).quantization).toMatchObject({ bits: 8, groupSize: 32 });
      // Only the checkpoint and the marker stay: the download is gone.
      expect(readdirSync(join(modelDir, '..')).sort()).toEqual(['complete', 'model']);
      const fetched = hub.fileRequests().length;
      expect(fetched).toBeGreaterThan(0);
      const second = await run();
      expect(second.status, second.stderr).toBe(0);
      expect(second.stdout).not.toContain('fetching');
      expect(second.stdout).toContain('is complete in');
      expect(hub.fileRequests().length).toBe(fetched);
    } finally {
      await hub.close();
      rmSync(work, { recursive: true, force: true });
    }
  });

  it('alerts and a dashboard: a PrometheusRule with the operator, each alert with a runbook in docs/operations.md; the dashboard ConfigMap for the sidecar', () => {
    expect(all().filter((o) => o.kind === 'PrometheusRule')).toEqual([]);
    const list = all([
      '--api-versions',
      'monitoring.coreos.com/v1',
      '--set',
      'alerts.labels.release=kps',
    ]);
    const rule = named(list, 'PrometheusRule', 'demo-loupe')!;
    expect(rule.metadata.labels?.release).toBe('kps');
    const rules = (
      rule.spec as {
        groups: Array<{
          rules: Array<{
            alert: string;
            annotations: Record<string, string>;
            labels: Record<string, string>;
          }>;
        }>;
      }
    ).groups.flatMap((g) => g.rules);
    expect([...new Set(rules.map((r) => r.alert))]).toEqual([
      'LoupeStageDown',
      'LoupeGatewayDown',
      'LoupeTargetDown',
      'LoupeHighErrorRate',
      'LoupeTTFTHigh',
      'LoupeQueueSaturated',
      'LoupeKVCacheFull',
    ]);
    const doc = readFileSync(join(repoRoot, 'docs', 'operations.md'), 'utf8');
    // GitHub's anchors: the heading in lower case, spaces as hyphens, punctuation dropped.
    const anchors = new Set(
      [...doc.matchAll(/^#+ (.+)$/gm)].map((m) =>
        m[1]!
          .toLowerCase()
          .replace(/[^a-z0-9 -]/g, '')
          .replace(/ /g, '-'),
      ),
    );
    for (const r of rules) {
      expect(r.labels.severity, r.alert).toMatch(/^(critical|warning)$/);
      expect(r.annotations.summary, r.alert).toBeTruthy();
      const url = r.annotations.runbook_url!;
      expect(
        url.startsWith('https://github.com/loupe-serving/loupe/blob/main/docs/operations.md#'),
        url,
      ).toBe(true);
      expect(anchors.has(url.split('#')[1]!), url).toBe(true);
    }
    const dashboard = named(
      all(['--set', 'dashboard.label=my_dashboards', '--set', 'dashboard.labelValue=yes']),
      'ConfigMap',
      'demo-loupe-dashboard',
    )!;
    expect(dashboard.metadata.labels?.my_dashboards).toBe('yes');
    const json = JSON.parse(dashboard.data!['loupe-loupe-demo.json']!) as {
      uid: string;
      panels: Array<{ type: string; title: string; targets?: Array<{ expr: string }> }>;
    };
    expect(json.uid).toMatch(/^loupe-[0-9a-f]{16}$/);
    expect(json.panels.filter((p) => p.type === 'row').map((p) => p.title)).toEqual([
      'Gateway',
      'Preprocessor',
      'Encoder',
      'Decoder',
      'Processes',
    ]);
    const exprs = json.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)).join('\n');
    for (const metric of [
      'loupe_gateway_requests_total',
      'loupe_decoder_time_to_first_token_seconds_bucket',
      'loupe_decoder_inter_token_latency_seconds_bucket',
      'loupe_decoder_e2e_request_latency_seconds_bucket',
      'loupe_encoder_queue_depth',
      'loupe_decoder_num_requests_waiting',
      'loupe_encoder_batch_size_bucket',
      'loupe_decoder_batch_size_sum',
      'loupe_encoder_cache_hits_total',
      'loupe_decoder_kv_cache_usage_perc',
      'loupe_decoder_prefix_cache_hits_total',
      'loupe_decoder_prefix_cache_queries_total',
      'loupe_preprocessor_queue_depth',
    ])
      expect(exprs, metric).toContain(metric);
    expect(all(['--set', 'dashboard.enabled=false']).filter((o) => o.kind === 'ConfigMap')).toEqual(
      [],
    );
  });

  it('the schema refuses malformed new values', () => {
    expect(helmError(['--set', 'networkPolicy.egress.imageFetch.cidrs={not-a-cidr}'])).toMatch(
      /cidrs/,
    );
    expect(helmError(['--set', 'model.fetch.convert.bits=3'])).toMatch(/bits/);
    expect(helmError(['--set', 'alerts.kvCacheUsage=2'])).toMatch(/kvCacheUsage/);
    expect(helmError(['--set', 'preStopSleepSeconds=-1'])).toMatch(/preStopSleepSeconds/);
    // An EnvVar's value is a string: a number would make an invalid Deployment.
    expect(helmError(['--set', 'extraEnv[0].name=A', '--set', 'extraEnv[0].value=1'])).toMatch(
      /extraEnv\/0\/value/,
    );
    expect(helmError(['--set', 'gateway.ingress.tls[0].hosts={a}'])).toMatch(/secretName/);
  });
});

describe('container images', () => {
  const ignored = readFileSync(join(repoRoot, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));

  it.each(['docker/Dockerfile', 'docker/Dockerfile.cuda'])(
    '%s copies files that exist and are not ignored, and runs real entry points',
    (file) => {
      const text = readFileSync(join(repoRoot, file), 'utf8');
      const copies = text
        .split('\n')
        .filter((l) => /^COPY /.test(l) && !l.includes('--from='))
        .flatMap((l) =>
          l
            .replace(/^COPY\s+/, '')
            .split(/\s+/)
            .slice(0, -1),
        );
      expect(copies.length).toBeGreaterThan(0);
      for (const source of copies) {
        expect(existsSync(join(repoRoot, source)), source).toBe(true);
        expect(ignored.includes(source), `${source} is in .dockerignore`).toBe(false);
      }
      const cmd = /^CMD \["([^"]+)"\]/m.exec(text)![1]!;
      expect(existsSync(join(repoRoot, cmd.replace(/^dist\//, '').replace(/\.js$/, '.ts')))).toBe(
        true,
      );
      expect(text).toMatch(/^USER (node|1000)$/m);
      expect(text).toMatch(/ENTRYPOINT \["\/usr\/bin\/tini", "--", "node"\]/);
    },
  );

  it('the chart runs entry points that exist, and the CLI package.json names', () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {
      bin: Record<string, string>;
    };
    expect(existsSync(join(repoRoot, pkg.bin.loupe!))).toBe(true);
    const text = readFileSync(join(chart, 'templates', 'deployments.yaml'), 'utf8');
    expect(text).toContain('args: ["dist/services/{{ $stage }}/main.js"]');
    for (const stage of ['gateway', 'preprocessor', 'encoder', 'decoder']) {
      expect(existsSync(join(repoRoot, 'services', stage, 'main.ts')), stage).toBe(true);
    }
  });
});
