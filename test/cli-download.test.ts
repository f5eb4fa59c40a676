// `loupe download` against a stand-in of the Hugging Face Hub's HTTP API on 127.0.0.1: the real
// CLI as a child process where it matters (the happy path, resume, corruption, tokens, usage),
// the exported function where a process adds nothing.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  watch,
  writeFileSync,
  type FSWatcher,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative, sep } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  downloadCheckpoint,
  HubDownloadError,
  parseRepoSpec,
} from '../services/cli/hub-download.js';
import { HubStandIn } from './helpers/hub-stand-in.js';
import { repoRoot } from './helpers/service-process.js';

const REPO = 'loupe-test/idefics2-tiny';
const COMMIT = 'c0ffee0000000000000000000000000000000001';
const TOKEN = 'hf_standInSecretToken0123456789';
const SHARD1 = 'model-00001-of-00002.safetensors';
const SHARD2 = 'model-00002-of-00002.safetensors';

/** What a complete download of REPO must hold, exactly. */
const WANTED = [
  'config.json',
  'generation_config.json',
  'preprocessor_config.json',
  'processor_config.json',
  'chat_template.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'model.safetensors.index.json',
  SHARD1,
  SHARD2,
].sort();

const work = mkdtempSync(join(tmpdir(), 'loupe-download-'));
let outCount = 0;
const freshOut = () => join(work, `out-${++outCount}`);

/** A safetensors-shaped file: header length, JSON header, then `bytes` of random data. */
function safetensorsLike(tensor: string, bytes: number): Buffer {
  const header = Buffer.from(
    JSON.stringify({
      __metadata__: { format: 'pt' },
      [tensor]: { dtype: 'F32', shape: [bytes / 4], data_offsets: [0, bytes] },
    }),
  );
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([length, header, randomBytes(bytes)]);
}

function writeRepo(dir: string, files: Record<string, string | Buffer>): string {
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  return dir;
}

const json = (value: unknown) => JSON.stringify(value, null, 2);
const vocab = Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`tok${i}`, i]));
const baseFiles = {
  'config.json': json({
    model_type: 'idefics2',
    architectures: ['Idefics2ForConditionalGeneration'],
  }),
  'tokenizer.json': json({ version: '1.0', model: { type: 'BPE', vocab, merges: [] } }),
};
const mainRepoDir = writeRepo(join(work, 'repo-main'), {
  ...baseFiles,
  'generation_config.json': json({ bos_token_id: 1, eos_token_id: [2, 32002] }),
  'preprocessor_config.json': json({ do_image_splitting: true, image_processor_type: 'x' }),
  'processor_config.json': json({ image_seq_len: 64 }),
  'chat_template.json': json({ chat_template: '{% for m in messages %}{{ m }}{% endfor %}' }),
  'tokenizer_config.json': json({ bos_token: '<s>', eos_token: '</s>' }),
  'special_tokens_map.json': json({ bos_token: '<s>' }),
  'model.safetensors.index.json': json({
    metadata: { total_size: 0 },
    weight_map: { 'a.weight': SHARD1, 'b.weight': SHARD2, 'c.weight': SHARD2 },
  }),
  [SHARD1]: safetensorsLike('a.weight', 300_000),
  [SHARD2]: safetensorsLike('b.weight', 250_000),
  // Never to be downloaded: other weight formats, a shard the index does not name, docs.
  'model-extra.safetensors': safetensorsLike('x', 1_000),
  'pytorch_model.bin': randomBytes(20_000),
  'flax_model.msgpack': randomBytes(5_000),
  'onnx/model.onnx': randomBytes(5_000),
  'README.md': '# A test repo\n',
  '.gitattributes': '*.safetensors filter=lfs diff=lfs merge=lfs -text\n',
});
const singleRepoDir = writeRepo(join(work, 'repo-single'), {
  ...baseFiles,
  'model.safetensors': safetensorsLike('w', 40_000),
  'pytorch_model.bin': randomBytes(1_000),
  // An empty file has no byte range to ask for.
  'added_tokens.json': '',
});
const noTokenizerDir = writeRepo(join(work, 'repo-no-tokenizer'), {
  'config.json': baseFiles['config.json'],
  'model.safetensors': safetensorsLike('w', 4_000),
});

const source = (path: string) => readFileSync(join(mainRepoDir, path));
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** Files under `dir`, as repo paths. */
function listDir(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)).split(sep).join('/'))
    .sort();
}

const children = new Set<ChildProcess>();
const watchers = new Set<FSWatcher>();

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI: `loupe download ...args` with HF_* variables only from `env`. */
function loupeDownload(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('HF_')),
  );
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), 'download', ...args], {
    cwd: repoRoot,
    env: { ...base, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 30_000,
  });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Resolves once `path` holds at least `size` bytes, on file system events (no polling). */
function waitForSize(path: string, size: number): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      // Not there yet (ENOENT) reads as empty.
      const current = statSync(path, { throwIfNoEntry: false })?.size ?? 0;
      if (current >= size) {
        watcher.close();
        watchers.delete(watcher);
        resolve();
      }
    };
    const watcher = watch(dirname(path), check);
    watchers.add(watcher);
    check();
  });
}

interface Summary {
  out: string;
  repo: string;
  revision: string;
  commit: string;
  files: string[];
  downloaded: string[];
  bytes: number;
  seconds: number;
}

const parseSummary = (stdout: string) => JSON.parse(stdout) as Summary;
const totalBytes = (paths: string[]) => paths.reduce((sum, p) => sum + source(p).length, 0);

describe('loupe download', () => {
  let hub: HubStandIn;
  let env: Record<string, string>;

  beforeAll(async () => {
    hub = await new HubStandIn({
      repos: {
        [REPO]: { dir: mainRepoDir, commit: COMMIT, refs: ['v1.0'] },
        'loupe-test/single-file': { dir: singleRepoDir, commit: 'a'.repeat(40) },
        'loupe-test/no-tokenizer': { dir: noTokenizerDir, commit: 'b'.repeat(40) },
      },
      // Small pages, so the listing takes several requests as on the real Hub.
      pageSize: 5,
    }).start();
    env = { HF_ENDPOINT: hub.url };
  });

  afterEach(async () => {
    for (const watcher of watchers) watcher.close();
    watchers.clear();
    await Promise.all(
      [...children].map(
        (child) =>
          new Promise<void>((resolve) => {
            child.once('close', () => resolve());
            child.kill('SIGKILL');
          }),
      ),
    );
    hub.cut = undefined;
    hub.ignoreResume = false;
    hub.corrupt.clear();
    hub.requests.length = 0;
  });

  afterAll(async () => {
    await hub.close();
    rmSync(work, { recursive: true, force: true });
  });

  it('downloads exactly the checkpoint files, pinned to the commit; a rerun fetches nothing', async () => {
    const out = freshOut();
    const { code, stdout, stderr } = await loupeDownload([REPO, '--out', out], env);
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    const summary = parseSummary(stdout);
    expect(summary).toMatchObject({ out, repo: REPO, revision: 'main', commit: COMMIT });
    expect([...summary.files].sort()).toEqual(WANTED);
    expect([...summary.downloaded].sort()).toEqual(WANTED);
    expect(summary.bytes).toBe(totalBytes(WANTED));
    expect(summary.seconds).toBeGreaterThan(0);

    expect(listDir(out)).toEqual(WANTED);
    for (const path of WANTED)
      expect(readFileSync(join(out, path)).equals(source(path))).toBe(true);

    // Every file came from the commit the branch pointed to, not from the branch.
    const resolves = hub.requests.filter((r) => r.kind === 'resolve');
    expect(resolves.length).toBeGreaterThan(0);
    expect(new Set(resolves.map((r) => r.revision))).toEqual(new Set([COMMIT]));
    expect(hub.requests.filter((r) => r.kind === 'tree').length).toBeGreaterThan(1);
    const fetched = new Set(hub.fileRequests().map((r) => r.file));
    for (const unwanted of ['pytorch_model.bin', 'model-extra.safetensors', 'README.md'])
      expect(fetched.has(unwanted)).toBe(false);

    // A rerun on the complete directory fetches nothing.
    hub.requests.length = 0;
    const again = await loupeDownload([REPO, '--out', out], env);
    expect(again.code).toBe(0);
    expect(parseSummary(again.stdout)).toMatchObject({ downloaded: [], bytes: 0 });
    expect(hub.fileRequests()).toEqual([]);
    expect(listDir(out)).toEqual(WANTED);
  });

  it('fails clearly when a shard is cut off, and a rerun resumes it with a Range request', async () => {
    const out = freshOut();
    mkdirSync(out);
    const part = join(out, `${SHARD1}.part`);
    const cutAt = 100_000;
    hub.cut = { file: SHARD1, afterBytes: cutAt, beforeCut: () => waitForSize(part, cutAt) };

    const first = await loupeDownload([REPO, '--out', out], env);
    expect(first.code).toBe(1);
    expect(first.stderr).toMatch(
      new RegExp(
        `${SHARD1}: the download was cut off at ${cutAt} of ${source(SHARD1).length} bytes .*` +
          'run the same command again to resume',
      ),
    );
    expect(first.stdout).toBe('');
    expect(statSync(part).size).toBe(cutAt);
    expect(existsSync(join(out, SHARD1))).toBe(false);

    hub.requests.length = 0;
    const second = await loupeDownload([REPO, '--out', out], env);
    expect(second.code).toBe(0);
    const resumed = hub.fileRequests().filter((r) => r.file === SHARD1 && r.range !== 'bytes=0-0');
    expect(resumed.map((r) => r.range)).toContain(`bytes=${cutAt}-`);
    expect(resumed.every((r) => r.range?.startsWith(`bytes=${cutAt}-`))).toBe(true);
    const summary = parseSummary(second.stdout);
    // The small files were completed by the first run; only the shards needed bytes.
    expect(summary.downloaded).toEqual([SHARD1, SHARD2]);
    expect(summary.bytes).toBe(source(SHARD1).length - cutAt + source(SHARD2).length);
    expect(listDir(out)).toEqual(WANTED);
    for (const path of WANTED)
      expect(readFileSync(join(out, path)).equals(source(path))).toBe(true);
  });

  it('refuses a corrupted LFS file, naming it and both hashes, and leaves nothing of it', async () => {
    const out = freshOut();
    hub.corrupt.add(SHARD2);
    const corrupted = Buffer.from(source(SHARD2));
    const middle = corrupted.length >> 1;
    corrupted[middle] = corrupted[middle]! ^ 0xff;

    const { code, stderr, stdout } = await loupeDownload([REPO, '--out', out], env);
    expect(code).toBe(1);
    expect(stdout).toBe('');
    expect(stderr).toContain(`${SHARD2}: SHA-256 mismatch`);
    expect(stderr).toContain(`expected ${sha256(source(SHARD2))}`);
    expect(stderr).toContain(`got ${sha256(corrupted)}`);
    expect(existsSync(join(out, SHARD2))).toBe(false);
    expect(existsSync(join(out, `${SHARD2}.part`))).toBe(false);

    // Once the Hub serves the right bytes, a rerun completes.
    hub.corrupt.clear();
    const again = await loupeDownload([REPO, '--out', out], env);
    expect(again.code).toBe(0);
    expect(parseSummary(again.stdout).downloaded).toEqual([SHARD2]);
    expect(readFileSync(join(out, SHARD2)).equals(source(SHARD2))).toBe(true);
  });

  it('refuses a corrupted small file by its git blob id, and repairs a damaged local copy', async () => {
    const out = freshOut();
    hub.corrupt.add('tokenizer.json');
    const error = await downloadCheckpoint({ repo: REPO, out, endpoint: hub.url }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(HubDownloadError);
    expect((error as HubDownloadError).kind).toBe('integrity');
    expect((error as Error).message).toMatch(/^tokenizer\.json: git blob SHA-1 mismatch: expected/);
    expect(existsSync(join(out, 'tokenizer.json'))).toBe(false);
    expect(existsSync(join(out, 'tokenizer.json.part'))).toBe(false);
    hub.corrupt.clear();

    await downloadCheckpoint({ repo: REPO, out, endpoint: hub.url });
    // Same size, different bytes: found by the hash and fetched again.
    const config = readFileSync(join(out, 'config.json'));
    writeFileSync(join(out, 'config.json'), Buffer.alloc(config.length, 0x20));
    const shard = readFileSync(join(out, SHARD1));
    shard[shard.length - 1] = shard[shard.length - 1]! ^ 1;
    writeFileSync(join(out, SHARD1), shard);
    const summary = await downloadCheckpoint({ repo: REPO, out, endpoint: hub.url });
    expect([...summary.downloaded].sort()).toEqual(['config.json', SHARD1]);
    for (const path of WANTED)
      expect(readFileSync(join(out, path)).equals(source(path))).toBe(true);
  });

  it('starts a file over when the server will not resume it', async () => {
    const out = freshOut();
    await downloadCheckpoint({ repo: REPO, out, endpoint: hub.url });
    // An interrupted shard: its final file gone, a prefix left as .part.
    rmSync(join(out, SHARD2));
    writeFileSync(join(out, `${SHARD2}.part`), source(SHARD2).subarray(0, 50_000));
    hub.ignoreResume = true;
    hub.requests.length = 0;
    const summary = await downloadCheckpoint({ repo: REPO, out, endpoint: hub.url });
    const asked = hub.fileRequests().filter((r) => r.range === 'bytes=50000-');
    expect(asked.map((r) => r.status)).toEqual([200]);
    expect(summary).toMatchObject({ downloaded: [SHARD2], bytes: source(SHARD2).length });
    expect(readFileSync(join(out, SHARD2)).equals(source(SHARD2))).toBe(true);
    expect(existsSync(join(out, `${SHARD2}.part`))).toBe(false);
  });

  it('sends HF_TOKEN to a protected Hub, explains a 401, and never prints the token', async () => {
    const locked = await new HubStandIn({
      repos: { [REPO]: { dir: mainRepoDir, commit: COMMIT } },
      token: TOKEN,
    }).start();
    try {
      const lockedEnv = { HF_ENDPOINT: locked.url };
      const out = freshOut();
      const without = await loupeDownload([REPO, '--out', out], lockedEnv);
      expect(without.code).toBe(1);
      expect(without.stderr).toMatch(/HTTP 401/);
      expect(without.stderr).toMatch(/set HF_TOKEN/);

      const wrong = await loupeDownload([REPO, '--out', out], {
        ...lockedEnv,
        HF_TOKEN: 'hf_notTheRightOne',
      });
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toMatch(/HTTP 401.*HF_TOKEN was sent but does not grant access/);
      expect(wrong.stderr).not.toContain('hf_notTheRightOne');

      const malformed = await loupeDownload([REPO, '--out', out], {
        ...lockedEnv,
        HF_TOKEN: 'not-a-token-secret',
      });
      expect(malformed.code).toBe(2);
      expect(malformed.stderr).toMatch(/HF_TOKEN does not look like a Hugging Face access token/);
      expect(malformed.stderr).not.toContain('not-a-token-secret');

      locked.requests.length = 0;
      const withToken = await loupeDownload([REPO, '--out', out], {
        ...lockedEnv,
        HF_TOKEN: TOKEN,
      });
      expect(withToken.code).toBe(0);
      expect(listDir(out)).toEqual(WANTED);
      for (const run of [without, wrong, withToken])
        expect(run.stdout + run.stderr).not.toContain(TOKEN);
      // Every request to the Hub's API and file URLs carried the token.
      const hubRequests = locked.requests.filter((r) => r.kind !== 'cdn');
      expect(hubRequests.length).toBeGreaterThan(0);
      expect(hubRequests.filter((r) => !r.authorized)).toEqual([]);
    } finally {
      await locked.close();
    }
  });

  it('rejects bad REPO syntax with a usage error, and reports unknown repos and revisions', async () => {
    // The syntax itself is covered by the parseRepoSpec test; these check the exit code and usage.
    for (const bad of ['not-a-repo', 'org/name@']) {
      const { code, stderr } = await loupeDownload([bad, '--out', freshOut()], env);
      expect(code, bad).toBe(2);
      expect(stderr).toContain('usage: loupe download ORG/NAME[@REVISION] --out DIR');
    }
    const noOut = await loupeDownload([REPO], env);
    expect(noOut).toMatchObject({ code: 2, stderr: expect.stringMatching(/--out is required/) });

    // --endpoint instead of HF_ENDPOINT.
    const unknown = await loupeDownload([
      'loupe-test/nope',
      '--out',
      freshOut(),
      '--endpoint',
      hub.url,
    ]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(
      /repository loupe-test\/nope not found at http:\/\/127\.0\.0\.1/,
    );

    const badRevision = await loupeDownload([`${REPO}@nope`, '--out', freshOut()], env);
    expect(badRevision.code).toBe(1);
    expect(badRevision.stderr).toMatch(/revision "nope" not found in loupe-test\/idefics2-tiny/);
  });

  it('parses REPO[@REVISION]', () => {
    expect(parseRepoSpec('HuggingFaceM4/idefics2-8b')).toEqual({
      repo: 'HuggingFaceM4/idefics2-8b',
    });
    expect(parseRepoSpec('org/name@refs/pr/12')).toEqual({
      repo: 'org/name',
      revision: 'refs/pr/12',
    });
    expect(parseRepoSpec(`o_1/n.a-me@${COMMIT}`)).toEqual({ repo: 'o_1/n.a-me', revision: COMMIT });
    for (const bad of [
      'name',
      'a/b/c',
      'org/',
      '/name',
      'org/-name',
      'org/na--me',
      'org/na..me',
      'org/name@',
      'org/name@x..y',
      'org/name@@x',
      'org/name@a b',
    ])
      expect(() => parseRepoSpec(bad), bad).toThrow(HubDownloadError);
  });

  it('follows a tag, takes model.safetensors alone, and requires a tokenizer', async () => {
    const tagged = await downloadCheckpoint({
      repo: REPO,
      revision: 'v1.0',
      out: freshOut(),
      endpoint: hub.url,
    });
    expect(tagged).toMatchObject({ revision: 'v1.0', commit: COMMIT });

    const out = freshOut();
    const single = await downloadCheckpoint({
      repo: 'loupe-test/single-file',
      out,
      endpoint: hub.url,
    });
    expect(listDir(out)).toEqual([
      'added_tokens.json',
      'config.json',
      'model.safetensors',
      'tokenizer.json',
    ]);
    expect(single.files).toEqual([
      'config.json',
      'tokenizer.json',
      'added_tokens.json',
      'model.safetensors',
    ]);
    expect(readFileSync(join(out, 'added_tokens.json')).length).toBe(0);

    await expect(
      downloadCheckpoint({ repo: 'loupe-test/no-tokenizer', out: freshOut(), endpoint: hub.url }),
    ).rejects.toMatchObject({
      kind: 'incomplete-repo',
      message: expect.stringMatching(/is not a complete checkpoint: tokenizer\.json is missing/),
    });
  });

  it('reports an unreachable Hub and an unwritable directory', async () => {
    // A port that was free a moment ago and has nothing listening now.
    const closedPort = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as { port: number };
        server.close(() => resolve(port));
      });
    });
    await expect(
      downloadCheckpoint({
        repo: REPO,
        out: freshOut(),
        endpoint: `http://127.0.0.1:${closedPort}`,
      }),
    ).rejects.toMatchObject({
      kind: 'network',
      message: expect.stringMatching(
        /cannot reach the Hub at http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/,
      ),
    });

    const file = join(work, 'a-file');
    writeFileSync(file, 'not a directory');
    await expect(
      downloadCheckpoint({ repo: REPO, out: join(file, 'out'), endpoint: hub.url }),
    ).rejects.toMatchObject({
      kind: 'disk',
      message: expect.stringContaining(`cannot create ${join(file, 'out')}`),
    });
  });
});
