// The Helm chart (charts/loupe) and the container images, checked offline. The chart checks
// need `helm` on PATH: without it they are skipped, saying so, except under CI=true, where
// a missing helm is a failure (.ci/run builds it from the Go module proxy).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { repoRoot } from './helpers/service-process.js';

const chart = join(repoRoot, 'charts', 'loupe');
const helm = spawnSync('helm', ['version', '--short'], { encoding: 'utf8' }).status === 0;
// tools/kubecheck, built by .ci/run into .ci/bin (or anywhere on PATH).
const kubecheck = [join(repoRoot, '.ci', 'bin', 'kubecheck'), 'kubecheck'].find(
  (bin) => spawnSync(bin, [], { encoding: 'utf8' }).status === 2,
);
const EXAMPLES = ['values-cpu-small', 'values-gpu'];

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
    expect(monitors(['--api-versions', 'monitoring.coreos.com/v1'])).toBe(3);
    expect(
      monitors([
        '--api-versions',
        'monitoring.coreos.com/v1',
        '--set',
        'serviceMonitor.enabled=false',
      ]),
    ).toBe(0);
    expect(monitors(['--set', 'serviceMonitor.enabled=true'])).toBe(3);
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
