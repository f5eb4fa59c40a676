// The container images' build stages, without a Docker engine: the build context is assembled
// as Docker would send it (the repository minus .dockerignore), each build stage's COPY lines
// are applied to an empty folder, and the stage's RUN commands run there. That proves the
// image compiles from exactly what its Dockerfile copies, and that what the runtime stage
// copies out of the build stage exists.
import { execFileSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/service-process.js';

interface Stage {
  from: string;
  name: string | undefined;
  copies: Array<{ from: string | undefined; sources: string[]; dest: string }>;
  runs: string[];
  env: Record<string, string>;
}

/** A Dockerfile's stages: FROM, COPY (with --from), RUN and ENV lines, continuations joined. */
function parseDockerfile(text: string): Stage[] {
  const lines = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const stages: Stage[] = [];
  for (const line of lines) {
    const [instruction, ...rest] = line.split(/\s+/);
    const args = rest.join(' ');
    if (instruction === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)!;
      stages.push({ from: m[1]!, name: m[2], copies: [], runs: [], env: {} });
    } else if (instruction === 'COPY') {
      const from = /--from=(\S+)/.exec(args)?.[1];
      const words = args.split(/\s+/).filter((w) => !w.startsWith('--'));
      stages.at(-1)!.copies.push({ from, sources: words.slice(0, -1), dest: words.at(-1)! });
    } else if (instruction === 'RUN') {
      stages.at(-1)!.runs.push(args);
    } else if (instruction === 'ENV') {
      for (const [, k, v] of args.matchAll(/(\w+)=(\S+)/g)) stages.at(-1)!.env[k!] = v!;
    }
  }
  return stages;
}

/**
 * .dockerignore patterns as Docker reads them: paths from the context root, `*` within one
 * path segment, `**` across any number; a pattern that matches a folder drops all of it.
 */
function ignoreMatcher(text: string): (path: string) => boolean {
  const patterns = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((p) => {
      const source = p
        .replace(/^\/+|\/+$/g, '')
        .split('/')
        .map((segment) =>
          segment === '**'
            ? '(?:.*/)?'
            : `${segment
                .replace(/[.+^${}()|[\]\\]/g, '\\$&')
                .replace(/\*/g, '[^/]*')
                .replace(/\?/g, '[^/]')}/`,
        )
        .join('');
      // A match of the whole path, or of a folder above it.
      return new RegExp(`^${source.replace(/\/$/, '')}(?:/.*)?$`);
    });
  return (path) => patterns.some((p) => p.test(path));
}

/** Every file of the context Docker would send: the repository minus .dockerignore. */
function contextFiles(): string[] {
  const ignored = ignoreMatcher(readFileSync(join(repoRoot, '.dockerignore'), 'utf8'));
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = relative(repoRoot, join(dir, entry.name));
      if (ignored(path)) continue;
      if (entry.isDirectory()) walk(join(dir, entry.name));
      else files.push(path);
    }
  };
  walk(repoRoot);
  return files;
}

/** Applies a stage's COPY lines (from the context) into `into`; returns the files placed. */
function applyCopies(stage: Stage, context: readonly string[], into: string): string[] {
  const placed: string[] = [];
  for (const copy of stage.copies.filter((c) => c.from === undefined)) {
    for (const source of copy.sources) {
      const files = context.filter((f) => f === source || f.startsWith(`${source}/`));
      expect(files.length, `COPY ${source}: nothing in the build context`).toBeGreaterThan(0);
      for (const file of files) {
        const dest = copy.dest.endsWith('/')
          ? join(
              copy.dest,
              file === source ? file.split('/').at(-1)! : relative(dirname(source), file),
            )
          : join(copy.dest, file === source ? '' : relative(source, file));
        mkdirSync(dirname(join(into, dest)), { recursive: true });
        cpSync(join(repoRoot, file), join(into, dest));
        placed.push(dest);
      }
    }
  }
  return placed.sort();
}

const dockerfiles = ['docker/Dockerfile', 'docker/Dockerfile.cuda'];
const parsed = Object.fromEntries(
  dockerfiles.map((f) => [f, parseDockerfile(readFileSync(join(repoRoot, f), 'utf8'))]),
);
const buildStage = (file: string) => parsed[file]!.find((s) => s.name === 'build')!;
const work = mkdtempSync(join(tmpdir(), 'loupe-image-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('container image builds', () => {
  const context = contextFiles();

  it('reads .dockerignore as Docker does', () => {
    const ignored = ignoreMatcher('*.md\n**/*.test.ts\ntest\n/dist/\n');
    expect(ignored('README.md')).toBe(true);
    expect(ignored('docs/gateway.md')).toBe(false); // `*.md` is anchored at the root
    expect(ignored('services/gateway/app.test.ts')).toBe(true);
    expect(ignored('test/gateway.test.ts')).toBe(true);
    expect(ignored('dist/services/gateway/main.js')).toBe(true);
    expect(ignored('services/gateway/app.ts')).toBe(false);
    expect(context).toContain('services/gateway/app.ts');
    expect(context).not.toContain('services/gateway/app.test.ts');
    expect(context.some((f) => f.startsWith('node_modules/'))).toBe(false);
  });

  it('run on a supported Node LTS (22 or 24)', () => {
    for (const file of dockerfiles) {
      const nodes = parsed[file]!.filter((s) => s.from.startsWith('node:'));
      expect(nodes.length, file).toBeGreaterThan(0);
      for (const s of nodes) expect(s.from, file).toMatch(/^node:(22|24)\.\d+-/);
    }
  });

  it('the CUDA build stage copies and runs what the CPU one does (with the CUDA install)', () => {
    const cpu = buildStage('docker/Dockerfile');
    const cuda = buildStage('docker/Dockerfile.cuda');
    expect(cuda.copies.filter((c) => !c.from)).toEqual(cpu.copies.filter((c) => !c.from));
    expect(cuda.runs.at(-1)!.replace(' --onnxruntime-node-install=cuda12', '')).toBe(
      cpu.runs.at(-1),
    );
  });

  it('the build stage compiles from exactly what the Dockerfile copies, and holds what the runtime stage takes', () => {
    const stage = buildStage('docker/Dockerfile');
    const app = join(work, 'app');
    mkdirSync(app);
    const placed = applyCopies(stage, context, app);
    expect(placed).toContain('package-lock.json');
    expect(placed.some((f) => f.endsWith('.test.ts'))).toBe(false);
    // The stage's own commands; packages come from npm's cache when it has them.
    for (const run of stage.runs) {
      try {
        execFileSync('sh', ['-c', run], {
          cwd: app,
          env: { ...process.env, ...stage.env, npm_config_prefer_offline: 'true', CI: 'true' },
          stdio: 'pipe',
          timeout: 600_000,
        });
      } catch (error) {
        const e = error as { stdout?: Buffer; stderr?: Buffer };
        const tail = (b?: Buffer) => String(b ?? '').slice(-4000);
        throw new Error(`RUN ${run} failed:\n${tail(e.stdout)}\n${tail(e.stderr)}`, {
          cause: error,
        });
      }
    }
    for (const stage of ['gateway', 'preprocessor', 'encoder', 'decoder'])
      expect(existsSync(join(app, 'dist', 'services', stage, 'main.js')), stage).toBe(true);
    expect(existsSync(join(app, 'node_modules', 'typescript')), 'dev dependencies pruned').toBe(
      false,
    );
    expect(readdirSync(join(app, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6'))).toEqual([
      'linux',
    ]);
    const runtime = parsed['docker/Dockerfile']!.at(-1)!;
    for (const copy of runtime.copies.filter((c) => c.from === 'build'))
      for (const source of copy.sources)
        expect(existsSync(join(app, relative('/app', source))), source).toBe(true);
    // The built gateway starts as far as its configuration check, from the pruned tree.
    let failure = '';
    try {
      execFileSync(process.execPath, ['dist/services/gateway/main.js'], {
        cwd: app,
        env: { PATH: process.env.PATH ?? '' },
        stdio: 'pipe',
        timeout: 30_000,
      });
    } catch (error) {
      const e = error as { stdout?: Buffer; stderr?: Buffer };
      failure = `${String(e.stdout ?? '')}${String(e.stderr ?? '')}`;
    }
    expect(failure).toMatch(/LOUPE_MODEL_DIR/);
  }, 900_000);
});
