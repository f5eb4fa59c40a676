// A stand-in of the Hugging Face Hub's HTTP API on 127.0.0.1, for tests of `loupe download`.
// It serves what @huggingface/hub and the downloader ask for, the way the Hub answers:
//   GET /api/models/{org}/{name}/revision/{rev}   model info with the resolved commit `sha`
//   GET /api/models/{org}/{name}/tree/{rev}       the file listing (paged with a Link header)
//   GET /{org}/{name}/resolve/{rev}/{path}        a file: small files directly, LFS files by a
//                                                 302 to a CDN-like URL on the same server
// with Range support, ETag, X-Repo-Commit and X-Linked-Size / X-Linked-Etag on LFS redirects,
// X-Error-Code on errors, and a bearer token required when one is configured. Faults can be
// injected: cut a file's answer after N bytes (the socket is destroyed), or serve a file with
// one byte flipped, or ignore ranges that would resume. Every request is recorded for assertions (without header values).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, relative, sep } from 'node:path';

export interface StandInRepo {
  /** Directory whose files (recursively) are the repo's files at `commit`. */
  dir: string;
  /** 40 hex digits. */
  commit: string;
  /** Branch and tag names that resolve to `commit`; `main` always does. */
  refs?: string[];
  /** Paths stored with LFS (default: by extension, as a typical .gitattributes has it). */
  isLfs?: (path: string) => boolean;
}

export interface HubStandInOptions {
  /** By `org/name`. */
  repos: Record<string, StandInRepo>;
  /** When set, API and resolve requests need `Authorization: Bearer <token>` (401 otherwise). */
  token?: string;
  /** Entries per page of the tree listing, to exercise the Link header paging. */
  pageSize?: number;
}

export interface RecordedRequest {
  method: string;
  /** 'info' | 'tree' | 'resolve' (the Hub URL of a file) | 'cdn' (where LFS files redirect). */
  kind: 'info' | 'tree' | 'resolve' | 'cdn' | 'other';
  url: string;
  /** For resolve and cdn requests: the file's path in the repo. */
  file?: string;
  /** The revision in a resolve URL. */
  revision?: string;
  range?: string;
  authorized: boolean;
  status?: number;
}

export interface CutFault {
  file: string;
  /** Bytes of the body sent before the socket is destroyed. */
  afterBytes: number;
  /**
   * Awaited after those bytes are written and before the cut, e.g. until the client has them
   * on disk, so the test knows how much a resume must skip.
   */
  beforeCut?: () => Promise<void>;
}

interface RepoFile {
  path: string;
  content: Buffer;
  lfs: boolean;
  /** Git blob id: of the content, or for LFS files of the pointer file. */
  oid: string;
  sha256: string;
  pointer?: Buffer;
}

const DEFAULT_LFS = /\.(safetensors|bin|pt|pth|h5|msgpack|onnx|ckpt|gguf)$/;

function gitBlobId(content: Buffer): string {
  return createHash('sha1').update(`blob ${content.length}\0`).update(content).digest('hex');
}

function walk(dir: string, root = dir): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = join(dir, name);
    return statSync(full).isDirectory() ? walk(full, root) : [relative(root, full)];
  });
}

export class HubStandIn {
  readonly requests: RecordedRequest[] = [];
  /** One-shot: the first matching answer is cut, later ones are whole. */
  cut: CutFault | undefined;
  /** When set, ranges that do not start at byte 0 are ignored: the whole file comes with 200. */
  ignoreResume = false;
  /** Files served with one byte flipped until removed from the set. */
  readonly corrupt = new Set<string>();
  private readonly files = new Map<string, Map<string, RepoFile>>();
  private server: Server | undefined;
  private url_ = '';

  constructor(private readonly options: HubStandInOptions) {
    for (const [name, repo] of Object.entries(options.repos)) {
      const isLfs = repo.isLfs ?? ((path: string) => DEFAULT_LFS.test(path));
      const files = new Map<string, RepoFile>();
      for (const path of walk(repo.dir)
        .map((p) => p.split(sep).join('/'))
        .sort()) {
        const content = readFileSync(join(repo.dir, path));
        const sha256 = createHash('sha256').update(content).digest('hex');
        const lfs = isLfs(path);
        const pointer = lfs
          ? Buffer.from(
              `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${content.length}\n`,
            )
          : undefined;
        files.set(path, {
          path,
          content,
          lfs,
          sha256,
          pointer,
          oid: gitBlobId(pointer ?? content),
        });
      }
      this.files.set(name, files);
    }
  }

  /** The endpoint, e.g. http://127.0.0.1:41234 (valid after start). */
  get url(): string {
    return this.url_;
  }

  async start(): Promise<this> {
    const server = createServer((req, res) => this.handle(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    this.url_ = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Requests that fetched bytes of a file (the Hub URL or the CDN one). */
  fileRequests(): RecordedRequest[] {
    return this.requests.filter((r) => r.kind === 'resolve' || r.kind === 'cdn');
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://stand-in');
    const authorized =
      this.options.token === undefined ||
      req.headers.authorization === `Bearer ${this.options.token}`;
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      kind: 'other',
      url: req.url ?? '/',
      range: req.headers.range,
      authorized,
    };
    this.requests.push(record);
    res.on('finish', () => (record.status = res.statusCode));
    const segments = url.pathname.split('/').slice(1).map(decodeURIComponent);

    // The CDN: signed-URL style, so no token needed (the real one checks a signature instead).
    if (segments[0] === '__cdn') {
      record.kind = 'cdn';
      const file = this.files
        .get(`${segments[1]}/${segments[2]}`)
        ?.get(segments.slice(3).join('/'));
      record.file = file?.path;
      if (!file) return this.error(res, 404, 'EntryNotFound', 'Entry not found');
      res.setHeader('ETag', `"${file.sha256}"`);
      return this.sendBytes(req, res, file);
    }

    if (segments[0] === 'api' && segments[1] === 'models') {
      const repoName = `${segments[2]}/${segments[3]}`;
      const kind = segments[4] === 'revision' ? 'info' : segments[4] === 'tree' ? 'tree' : 'other';
      record.kind = kind;
      if (!authorized) return this.unauthorized(res);
      const repo = this.options.repos[repoName];
      if (!repo || kind === 'other')
        return this.error(res, 404, 'RepositoryNotFound', 'Repository not found');
      const revision = segments[5] ?? '';
      if (!this.resolves(repo, revision))
        return this.error(res, 404, 'RevisionNotFound', `Invalid rev id: ${revision}`);
      if (kind === 'info') {
        return this.json(res, {
          _id: `id-${repoName}`,
          id: repoName,
          sha: repo.commit,
          private: this.options.token !== undefined,
          gated: false,
          downloads: 0,
          likes: 0,
          lastModified: '2024-01-01T00:00:00.000Z',
          pipeline_tag: 'image-text-to-text',
        });
      }
      return this.tree(res, url, repoName);
    }

    // GET /{org}/{name}/resolve/{revision}/{path...}
    if (segments[2] === 'resolve' && segments.length >= 5) {
      record.kind = 'resolve';
      const repoName = `${segments[0]}/${segments[1]}`;
      record.revision = segments[3];
      record.file = segments.slice(4).join('/');
      if (!authorized) return this.unauthorized(res);
      const repo = this.options.repos[repoName];
      if (!repo) return this.error(res, 404, 'RepositoryNotFound', 'Repository not found');
      if (!this.resolves(repo, segments[3]!))
        return this.error(res, 404, 'RevisionNotFound', 'Revision not found');
      const file = this.files.get(repoName)!.get(record.file);
      if (!file) return this.error(res, 404, 'EntryNotFound', 'Entry not found');
      res.setHeader('X-Repo-Commit', repo.commit);
      if (file.lfs) {
        res.setHeader('X-Linked-Size', String(file.content.length));
        res.setHeader('X-Linked-Etag', `"${file.sha256}"`);
        res.setHeader('ETag', `"${file.oid}"`);
        res.setHeader('Location', `/__cdn/${repoName}/${file.path}`);
        res.statusCode = 302;
        return void res.end();
      }
      res.setHeader('ETag', `"${file.oid}"`);
      return this.sendBytes(req, res, file);
    }

    this.error(res, 404, undefined, 'Not found');
  }

  private resolves(repo: StandInRepo, revision: string): boolean {
    return revision === repo.commit || revision === 'main' || (repo.refs ?? []).includes(revision);
  }

  private tree(res: ServerResponse, url: URL, repoName: string): void {
    const entries = [...this.files.get(repoName)!.values()].map((file) => ({
      type: 'file',
      oid: file.oid,
      size: file.content.length,
      path: file.path,
      ...(file.lfs
        ? {
            lfs: { oid: file.sha256, size: file.content.length, pointerSize: file.pointer!.length },
          }
        : {}),
    }));
    const pageSize = this.options.pageSize ?? entries.length;
    const cursor = Number(url.searchParams.get('cursor') ?? '0');
    const page = entries.slice(cursor, cursor + pageSize);
    if (cursor + pageSize < entries.length) {
      const next = new URL(url.pathname + url.search, this.url_);
      next.searchParams.set('cursor', String(cursor + pageSize));
      res.setHeader('Link', `<${next.href}>; rel="next"`);
    }
    this.json(res, page);
  }

  private sendBytes(req: IncomingMessage, res: ServerResponse, file: RepoFile): void {
    let content = file.content;
    if (this.corrupt.has(file.path)) {
      content = Buffer.from(content);
      const at = content.length >> 1;
      content[at] = content[at]! ^ 0xff;
    }
    const total = content.length;
    let start = 0;
    let end = total - 1;
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', 'application/octet-stream');
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    const resumeIgnored = this.ignoreResume && range !== null && Number(range[1]) > 0;
    if (req.headers.range !== undefined && !resumeIgnored) {
      if (!range || Number(range[1]) >= total) {
        res.statusCode = 416;
        res.setHeader('Content-Range', `bytes */${total}`);
        return void res.end();
      }
      start = Number(range[1]);
      if (range[2]) end = Math.min(Number(range[2]), total - 1);
      res.statusCode = 206;
      res.setHeader('Content-Range', `bytes ${start}-${end}/${total}`);
    }
    const body = content.subarray(start, end + 1);
    res.setHeader('Content-Length', String(body.length));
    if (req.method === 'HEAD') return void res.end();

    const cut = this.cut;
    if (cut && cut.file === file.path && body.length > cut.afterBytes) {
      this.cut = undefined;
      res.write(body.subarray(0, cut.afterBytes), () => {
        void (cut.beforeCut?.() ?? Promise.resolve()).finally(() => res.socket?.destroy());
      });
      return;
    }
    res.end(body);
  }

  private unauthorized(res: ServerResponse): void {
    this.error(res, 401, undefined, 'Invalid credentials in Authorization header');
  }

  private error(res: ServerResponse, status: number, code: string | undefined, message: string) {
    if (code) res.setHeader('X-Error-Code', code);
    res.statusCode = status;
    this.json(res, { error: message });
  }

  private json(res: ServerResponse, value: unknown): void {
    const body = Buffer.from(JSON.stringify(value));
    res.setHeader('Content-Type', 'application/json; charset=utf-8');
    res.setHeader('Content-Length', String(body.length));
    res.end(body);
  }
}
