// Downloads the files of an Idefics2 checkpoint from the Hugging Face Hub (or anything that
// speaks its HTTP API, e.g. a mirror named by HF_ENDPOINT) into a plain directory.
//
// The listing, the revision lookup and the per-file download info come from @huggingface/hub.
// The bytes themselves are fetched here with a ranged GET: the library's download helpers
// either write into the Hub cache layout (downloadFileToCacheDir, which starts over after an
// interruption) or return a Blob whose stream hides the HTTP status, so a server that ignores
// `Range` and answers 200 with the whole file could not be told apart from a resumed answer,
// and errors arrive as bare strings. Fetching here lets a resume check for 206 and the
// Content-Range it names, keep the Hub's status codes for clear messages, and send the token
// only to the Hub itself (not to a CDN the Hub redirects to, whose URLs are signed).
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  mkdir,
  open,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  fileDownloadInfo,
  HubApiError,
  InvalidApiResponseFormatError,
  listFiles,
  modelInfo,
  type ListFileEntry,
} from '@huggingface/hub';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

/** Non-weight files an Idefics2 checkpoint may have; each is downloaded when the repo has it. */
export const CHECKPOINT_FILES = [
  'config.json',
  'generation_config.json',
  'preprocessor_config.json',
  'processor_config.json',
  'chat_template.json',
  // Newer repos keep the chat template here, and the loader reads it first.
  'chat_template.jinja',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
] as const;

/** Files without which the directory is no checkpoint (besides a set of weights). */
export const REQUIRED_FILES = ['config.json', 'tokenizer.json'] as const;

const SINGLE_WEIGHTS = 'model.safetensors';
const WEIGHTS_INDEX = 'model.safetensors.index.json';

export type HubDownloadErrorKind =
  /** Bad REPO, revision, endpoint or token syntax: a usage error. */
  | 'usage'
  /** 401 or 403 from the Hub. */
  | 'auth'
  /** No such repository, revision or file. */
  | 'not-found'
  /** The repository lacks a file a checkpoint needs. */
  | 'incomplete-repo'
  /** The Hub could not be reached, or a transfer was cut off (a rerun resumes it). */
  | 'network'
  /** A downloaded file's hash does not match the listing's. */
  | 'integrity'
  /** The output directory could not be created or written. */
  | 'disk'
  /** The Hub answered something this client does not understand. */
  | 'protocol';

export class HubDownloadError extends Error {
  override readonly name = 'HubDownloadError';
  constructor(
    message: string,
    readonly kind: HubDownloadErrorKind,
  ) {
    super(message);
  }
}

export interface RepoSpec {
  /** `org/name`. */
  repo: string;
  /** A branch, tag or commit; undefined means the default branch. */
  revision?: string;
}

// Repo name parts as the Hub accepts them: letters, digits, `_`, `-` and `.`, starting and
// ending with a letter, digit or `_`, at most 96 characters, without `--` or `..`.
const REPO_PART = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$/;
// Branch and tag names are git refs (`refs/pr/1` included); commits are hex.
const REVISION = /^[A-Za-z0-9_][A-Za-z0-9_.+/-]{0,254}$/;

/** Parses `org/name` or `org/name@revision`; throws a 'usage' HubDownloadError. */
export function parseRepoSpec(spec: string): RepoSpec {
  const at = spec.indexOf('@');
  const repo = at < 0 ? spec : spec.slice(0, at);
  const revision = at < 0 ? undefined : spec.slice(at + 1);
  const parts = repo.split('/');
  if (
    parts.length !== 2 ||
    !parts.every((part) => REPO_PART.test(part) && !part.includes('--') && !part.includes('..'))
  ) {
    throw new HubDownloadError(
      `REPO must be org/name or org/name@revision (e.g. HuggingFaceM4/idefics2-8b@main), got "${spec}"`,
      'usage',
    );
  }
  if (revision !== undefined) {
    if (
      !REVISION.test(revision) ||
      revision.includes('..') ||
      revision.includes('//') ||
      revision.endsWith('/') ||
      revision.endsWith('.lock')
    ) {
      throw new HubDownloadError(
        `the revision after "@" must be a branch, tag or commit, got "${revision}" in "${spec}"`,
        'usage',
      );
    }
  }
  return revision === undefined ? { repo } : { repo, revision };
}

/** The hub URL without a trailing slash; throws a 'usage' HubDownloadError. */
export function normalizeEndpoint(endpoint: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new HubDownloadError(
      `the Hub endpoint must be an http(s) URL, got "${endpoint}"`,
      'usage',
    );
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.search || url.hash) {
    throw new HubDownloadError(
      `the Hub endpoint must be an http(s) URL, got "${endpoint}"`,
      'usage',
    );
  }
  return url.href.replace(/\/+$/, '');
}

export interface DownloadProgress {
  /** 'verify': hashing a file already on disk; 'fetch': receiving bytes. */
  phase: 'verify' | 'fetch';
  /** The file's path in the repository. */
  path: string;
  /** Bytes received so far in this run, over all files. */
  fetchedBytes: number;
  /** Bytes this run must receive in all, as far as known (grows if a resume must restart). */
  totalBytes: number;
}

export interface DownloadCheckpointOptions extends RepoSpec {
  /** The output directory; created when missing. */
  out: string;
  /** The Hub's URL (default https://huggingface.co). */
  endpoint?: string;
  /** An access token (`hf_...`), sent as `Authorization: Bearer` to the Hub only. */
  token?: string;
  onProgress?: (progress: DownloadProgress) => void;
}

export interface DownloadCheckpointSummary {
  out: string;
  repo: string;
  /** The revision asked for (the default branch when none was). */
  revision: string;
  /** The commit the revision resolved to; every file was fetched at this commit. */
  commit: string;
  /** Every checkpoint file now in `out`, as repository paths. */
  files: string[];
  /** The files that needed bytes from the Hub in this run. */
  downloaded: string[];
  /** Bytes received from the Hub in this run. */
  bytes: number;
}

/** What a file in the repository must be, from the listing. */
interface Expected {
  path: string;
  size: number;
  /** LFS files carry a SHA-256; other files their git blob id (SHA-1 of "blob N\0" + data). */
  hash?: { algorithm: 'sha256' | 'git-sha1'; digest: string };
}

/** A file whose bytes are not all on disk yet. */
interface Pending {
  expected: Expected;
  /** Bytes already in the `.part` file. */
  offset: number;
}

function expectation(entry: ListFileEntry): Expected {
  if (entry.lfs) {
    return {
      path: entry.path,
      size: entry.lfs.size,
      hash: { algorithm: 'sha256', digest: entry.lfs.oid.toLowerCase() },
    };
  }
  if (entry.oid && /^[0-9a-f]{40}$/i.test(entry.oid)) {
    return {
      path: entry.path,
      size: entry.size,
      hash: { algorithm: 'git-sha1', digest: entry.oid.toLowerCase() },
    };
  }
  return { path: entry.path, size: entry.size };
}

function newHash(expected: Expected): Hash | undefined {
  if (!expected.hash) return undefined;
  if (expected.hash.algorithm === 'sha256') return createHash('sha256');
  return createHash('sha1').update(`blob ${expected.size}\0`);
}

function hashLabel(expected: Expected): string {
  return expected.hash?.algorithm === 'git-sha1' ? 'git blob SHA-1' : 'SHA-256';
}

/** A repository path that stays inside the output directory once joined onto it. */
function isSafeRelativePath(path: string): boolean {
  if (path === '' || path.startsWith('/') || path.includes('\\') || path.includes('\0'))
    return false;
  return path.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

function describeCause(error: unknown): string {
  const cause = (error as { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code && !cause.message.includes(code) ? `${code}: ${cause.message}` : cause.message;
  }
  return error instanceof Error ? error.message : String(error);
}

function diskError(path: string, error: unknown): HubDownloadError {
  return new HubDownloadError(`cannot write ${path}: ${(error as Error).message}`, 'disk');
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    const stats = await stat(path);
    return stats.isFile() ? stats.size : undefined;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw diskError(path, error);
  }
}

async function hashFileInto(path: string, hash: Hash): Promise<void> {
  try {
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  } catch (error) {
    throw new HubDownloadError(`cannot read ${path}: ${(error as Error).message}`, 'disk');
  }
}

async function writeAll(handle: FileHandle, chunk: Uint8Array): Promise<void> {
  let written = 0;
  while (written < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, written, chunk.length - written);
    written += bytesWritten;
  }
}

/** Everything one download run shares. */
class Session {
  readonly endpoint: string;
  readonly origin: string;
  /** X-Error-Code of failed answers by URL: HubApiError keeps the URL but not the headers. */
  private readonly errorCodes = new Map<string, string>();
  commit = '';
  gated: false | 'auto' | 'manual' = false;
  fetchedBytes = 0;
  totalBytes = 0;

  constructor(
    readonly options: DownloadCheckpointOptions,
    readonly revision: string,
  ) {
    this.endpoint = normalizeEndpoint(options.endpoint ?? DEFAULT_ENDPOINT);
    this.origin = new URL(this.endpoint).origin;
  }

  /** fetch for the library and for the byte transfers: notes error codes, names network errors. */
  readonly fetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = input instanceof Request ? input.url : String(input);
    let response: Response;
    try {
      response = await fetch(input, init);
    } catch (error) {
      throw new HubDownloadError(
        `cannot reach the Hub at ${new URL(url).origin}: ${describeCause(error)}`,
        'network',
      );
    }
    if (!response.ok) {
      const code = response.headers.get('x-error-code');
      if (code) this.errorCodes.set(response.url || url, code);
    }
    return response;
  };

  /** The library's credential and endpoint parameters. */
  get hub() {
    return { hubUrl: this.endpoint, accessToken: this.options.token, fetch: this.fetch };
  }

  get label(): string {
    return `${this.options.repo}@${this.revision}`;
  }

  /** Turns what the library throws into a HubDownloadError with a message a user can act on. */
  explain(error: unknown, what: string): Error {
    if (error instanceof HubDownloadError) return error;
    if (error instanceof InvalidApiResponseFormatError) {
      return new HubDownloadError(
        `${what}: unexpected answer from ${this.endpoint}: ${error.message}`,
        'protocol',
      );
    }
    if (error instanceof SyntaxError) {
      return new HubDownloadError(
        `${what}: ${this.endpoint} answered with invalid JSON: ${error.message}`,
        'protocol',
      );
    }
    if (error instanceof TypeError && (error as { cause?: unknown }).cause !== undefined) {
      // fetch reports a connection lost while reading a body as a TypeError with a cause.
      return new HubDownloadError(`${what}: ${describeCause(error)}`, 'network');
    }
    if (!(error instanceof HubApiError)) return error as Error;
    return this.statusError(error.statusCode, this.errorCodes.get(error.url), what, error.message);
  }

  statusError(status: number, code: string | undefined, what: string, detail?: string) {
    const repo = this.options.repo;
    if (status === 401 || status === 403) {
      const hint =
        this.gated !== false
          ? `${repo} is a gated model: accept its terms at ${this.endpoint}/${repo} and set HF_TOKEN to an access token of that account`
          : this.options.token
            ? 'HF_TOKEN was sent but does not grant access to this repo (for a gated repo, accept its terms on the Hub with the same account)'
            : 'the repo may be gated or private (or may not exist): set HF_TOKEN to an access token that can read it';
      return new HubDownloadError(
        `${what}: the Hub refused access (HTTP ${status}${code ? ` ${code}` : ''}); ${hint}`,
        'auth',
      );
    }
    if (status === 404) {
      if (code === 'RevisionNotFound')
        return new HubDownloadError(
          `revision "${this.revision}" not found in ${repo} at ${this.endpoint}`,
          'not-found',
        );
      if (code === 'EntryNotFound')
        return new HubDownloadError(`${what}: no such file at ${this.label}`, 'not-found');
      if (code === 'RepositoryNotFound')
        return new HubDownloadError(
          `repository ${repo} not found at ${this.endpoint}` +
            (this.options.token ? '' : ' (if it is private, set HF_TOKEN)'),
          'not-found',
        );
      return new HubDownloadError(
        `${what}: not found at ${this.endpoint} (no such repository ${repo} or revision "${this.revision}")`,
        'not-found',
      );
    }
    return new HubDownloadError(
      `${what}: the Hub answered HTTP ${status}${detail ? ` (${detail})` : ''}`,
      'protocol',
    );
  }
}

/**
 * Downloads the files an Idefics2 checkpoint needs from `repo` at `revision` into `out`:
 * the configs and tokenizer files the repo has, and its safetensors weights (one file, or an
 * index and the shards it names). Interrupted files resume from `<path>.part`; complete files
 * whose size and hash match the listing are kept.
 */
export async function downloadCheckpoint(
  options: DownloadCheckpointOptions,
): Promise<DownloadCheckpointSummary> {
  parseRepoSpec(
    options.revision !== undefined ? `${options.repo}@${options.revision}` : options.repo,
  );
  if (options.token !== undefined && !options.token.startsWith('hf_')) {
    // @huggingface/hub refuses such tokens itself, with a message that does not say where the
    // token came from.
    throw new HubDownloadError(
      'HF_TOKEN does not look like a Hugging Face access token (they start with "hf_")',
      'usage',
    );
  }
  const session = new Session(options, options.revision ?? 'main');
  const { out, repo } = options;

  // Pin the revision to a commit first, so a branch that moves while the files download cannot
  // mix files of two commits.
  try {
    const info = await modelInfo({
      ...session.hub,
      name: repo,
      revision: session.revision,
      additionalFields: ['sha'],
    });
    session.gated = info.gated ?? false;
    session.commit = typeof info.sha === 'string' && info.sha !== '' ? info.sha : session.revision;
  } catch (error) {
    throw session.explain(error, `looking up ${session.label}`);
  }

  const listed = new Map<string, ListFileEntry>();
  try {
    for await (const entry of listFiles({
      ...session.hub,
      repo: { type: 'model', name: repo },
      // listFiles puts the revision into the URL as it is; a commit needs no escaping, a
      // branch such as refs/pr/1 (when the Hub gave no commit) does.
      revision: encodeURIComponent(session.commit),
      recursive: true,
    })) {
      if (entry.type === 'file') listed.set(entry.path, entry);
    }
  } catch (error) {
    throw session.explain(error, `listing the files of ${session.label}`);
  }

  const missing = REQUIRED_FILES.filter((name) => !listed.has(name));
  if (missing.length > 0) {
    throw new HubDownloadError(
      `${session.label} is not a complete checkpoint: ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} missing`,
      'incomplete-repo',
    );
  }

  try {
    await mkdir(out, { recursive: true });
  } catch (error) {
    throw new HubDownloadError(`cannot create ${out}: ${(error as Error).message}`, 'disk');
  }

  const files: string[] = CHECKPOINT_FILES.filter((name) => listed.has(name));
  const downloaded: string[] = [];
  const fetchAll = async (paths: string[]) => {
    const pending: Pending[] = [];
    for (const path of paths) {
      const state = await inspect(session, expectation(listed.get(path)!));
      if (state) pending.push(state);
    }
    session.totalBytes += pending.reduce((sum, p) => sum + (p.expected.size - p.offset), 0);
    for (const item of pending) {
      await fetchFile(session, item);
      downloaded.push(item.expected.path);
    }
  };

  // The weights: one file when the repo has it (the loader prefers it too), else the index and
  // exactly the shards its weight_map names. Pickled or other formats are never fetched.
  let weights: string[];
  if (listed.has(SINGLE_WEIGHTS)) {
    weights = [SINGLE_WEIGHTS];
  } else if (listed.has(WEIGHTS_INDEX)) {
    await fetchAll([WEIGHTS_INDEX]);
    files.push(WEIGHTS_INDEX);
    weights = await shardsOf(join(out, WEIGHTS_INDEX), listed, session.label);
  } else {
    throw new HubDownloadError(
      `${session.label} has no safetensors weights: neither ${SINGLE_WEIGHTS} nor ${WEIGHTS_INDEX} ` +
        'is in the repo (other weight formats are not downloaded)',
      'incomplete-repo',
    );
  }
  files.push(...weights);
  await fetchAll(files.filter((path) => path !== WEIGHTS_INDEX));

  return {
    out,
    repo,
    revision: session.revision,
    commit: session.commit,
    files,
    downloaded,
    bytes: session.fetchedBytes,
  };
}

/** The shard files a downloaded index names, each checked against the listing. */
async function shardsOf(
  indexPath: string,
  listed: Map<string, ListFileEntry>,
  label: string,
): Promise<string[]> {
  let weightMap: unknown;
  try {
    weightMap = (JSON.parse(await readFile(indexPath, 'utf8')) as { weight_map?: unknown })
      .weight_map;
  } catch (error) {
    throw new HubDownloadError(
      `${WEIGHTS_INDEX} of ${label} is not valid JSON: ${(error as Error).message}`,
      'incomplete-repo',
    );
  }
  if (
    typeof weightMap !== 'object' ||
    weightMap === null ||
    Object.values(weightMap).some((file) => typeof file !== 'string')
  ) {
    throw new HubDownloadError(
      `${WEIGHTS_INDEX} of ${label}: weight_map must map tensor names to file names`,
      'incomplete-repo',
    );
  }
  const shards = [...new Set(Object.values(weightMap as Record<string, string>))];
  if (shards.length === 0)
    throw new HubDownloadError(`${WEIGHTS_INDEX} of ${label} names no shards`, 'incomplete-repo');
  for (const shard of shards) {
    if (!isSafeRelativePath(shard) || !shard.endsWith('.safetensors')) {
      throw new HubDownloadError(
        `${WEIGHTS_INDEX} of ${label} names "${shard}", which is not a safetensors file inside the repo`,
        'incomplete-repo',
      );
    }
    if (!listed.has(shard)) {
      throw new HubDownloadError(
        `${WEIGHTS_INDEX} of ${label} names ${shard}, which is not in the repo`,
        'incomplete-repo',
      );
    }
  }
  return shards;
}

/**
 * Checks what of a file is on disk: undefined when the final file is complete and verified;
 * otherwise how many bytes of its `.part` can be kept.
 */
async function inspect(session: Session, expected: Expected): Promise<Pending | undefined> {
  if (!isSafeRelativePath(expected.path)) {
    throw new HubDownloadError(`the listing names an unsafe path "${expected.path}"`, 'protocol');
  }
  const final = join(session.options.out, expected.path);
  const part = `${final}.part`;
  const report = () =>
    session.options.onProgress?.({
      phase: 'verify',
      path: expected.path,
      fetchedBytes: session.fetchedBytes,
      totalBytes: session.totalBytes,
    });

  if ((await sizeOf(final)) === expected.size) {
    const hash = newHash(expected);
    if (!hash) return undefined;
    report();
    await hashFileInto(final, hash);
    if (hash.digest('hex') === expected.hash!.digest) return undefined;
    // A stale or damaged copy: fetched again below and replaced only once verified.
  }

  let offset = (await sizeOf(part)) ?? 0;
  if (offset > expected.size) {
    // Longer than the file can be: not a prefix of it.
    await removePart(part);
    offset = 0;
  }
  if (offset > 0 && offset === expected.size) report();
  return { expected, offset };
}

async function removePart(part: string): Promise<void> {
  try {
    await rm(part, { force: true });
  } catch (error) {
    throw new HubDownloadError(`cannot remove ${part}: ${(error as Error).message}`, 'disk');
  }
}

/** Completes `<path>.part` from its current size, verifies it and renames it into place. */
async function fetchFile(session: Session, { expected, offset: start }: Pending): Promise<void> {
  const { path, size } = expected;
  const final = join(session.options.out, path);
  const part = `${final}.part`;
  try {
    await mkdir(dirname(final), { recursive: true });
  } catch (error) {
    throw new HubDownloadError(
      `cannot create ${dirname(final)}: ${(error as Error).message}`,
      'disk',
    );
  }

  let hash = newHash(expected);
  let offset = start;
  // The resumed prefix is hashed from disk, so the hash covers exactly the bytes in the file.
  if (offset > 0 && hash) await hashFileInto(part, hash);

  if (size === 0) {
    // Nothing to fetch (and an empty file has no byte range to ask for).
    try {
      await writeFile(part, '');
    } catch (error) {
      throw diskError(part, error);
    }
  } else if (offset < size) {
    let info;
    try {
      info = await fileDownloadInfo({
        ...session.hub,
        repo: { type: 'model', name: session.options.repo },
        path,
        revision: session.commit,
      });
    } catch (error) {
      throw session.explain(error, `resolving ${path}`);
    }
    if (!info) throw new HubDownloadError(`${path}: no such file at ${session.label}`, 'not-found');
    if (info.size !== size) {
      throw new HubDownloadError(
        `${path}: the Hub reports ${info.size} bytes but the listing ${size}`,
        'protocol',
      );
    }

    const headers: Record<string, string> = {};
    // The token goes to the Hub only; a CDN it redirects to gets signed URLs instead.
    if (session.options.token && new URL(info.url).origin === session.origin)
      headers.Authorization = `Bearer ${session.options.token}`;
    if (offset > 0) headers.Range = `bytes=${offset}-`;
    const response = await session.fetch(info.url, { headers });

    if (offset > 0 && response.status === 200) {
      // The server ignored the range and sends the whole file: start the part over.
      session.totalBytes += offset;
      offset = 0;
      hash = newHash(expected);
    } else if (offset > 0 && response.status === 416) {
      await response.body?.cancel();
      await removePart(part);
      throw new HubDownloadError(
        `${path}: the Hub refused to resume at byte ${offset}; removed the partial file, run the same command again`,
        'protocol',
      );
    } else if (!response.ok) {
      await response.body?.cancel();
      throw session.statusError(
        response.status,
        response.headers.get('x-error-code') ?? undefined,
        `downloading ${path}`,
      );
    } else if (offset > 0) {
      const range = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(response.headers.get('content-range') ?? '');
      if (!range || Number(range[1]) !== offset) {
        await response.body?.cancel();
        throw new HubDownloadError(
          `${path}: asked to resume at byte ${offset} but the Hub answered Content-Range "${response.headers.get('content-range') ?? ''}"`,
          'protocol',
        );
      }
    }
    if (!response.body) throw new HubDownloadError(`${path}: the Hub sent no body`, 'protocol');

    let handle: FileHandle;
    try {
      handle = await open(part, offset > 0 ? 'a' : 'w');
    } catch (error) {
      await response.body.cancel();
      throw diskError(part, error);
    }
    const reader = response.body.getReader();
    let failure: unknown;
    try {
      for (;;) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch (error) {
          throw new HubDownloadError(
            `${path}: the download was cut off at ${offset} of ${size} bytes (${describeCause(error)}); ` +
              'run the same command again to resume',
            'network',
          );
        }
        if (chunk.done) break;
        const bytes = chunk.value;
        if (offset + bytes.length > size) {
          throw new HubDownloadError(
            `${path}: the Hub sent more than the ${size} bytes the listing gives; removed the partial file`,
            'protocol',
          );
        }
        try {
          await writeAll(handle, bytes);
        } catch (error) {
          throw diskError(part, error);
        }
        hash?.update(bytes);
        offset += bytes.length;
        session.fetchedBytes += bytes.length;
        session.options.onProgress?.({
          phase: 'fetch',
          path,
          fetchedBytes: session.fetchedBytes,
          totalBytes: session.totalBytes,
        });
      }
    } catch (error) {
      failure = error;
      await reader.cancel().catch(() => undefined);
    }
    try {
      await handle.close();
    } catch (error) {
      // A close can report a failed delayed write (e.g. a full disk on a network file system).
      failure ??= diskError(part, error);
    }
    if (failure instanceof HubDownloadError && failure.kind === 'protocol') await removePart(part);
    if (failure !== undefined) throw failure;
    if (offset < size) {
      throw new HubDownloadError(
        `${path}: the download ended early at ${offset} of ${size} bytes; run the same command again to resume`,
        'network',
      );
    }
  }

  if (hash && expected.hash) {
    const actual = hash.digest('hex');
    if (actual !== expected.hash.digest) {
      await removePart(part);
      throw new HubDownloadError(
        `${path}: ${hashLabel(expected)} mismatch: expected ${expected.hash.digest}, got ${actual}; ` +
          (start > 0
            ? 'removed the download, which had resumed a partial file of an earlier run: run the ' +
              'same command again to fetch it afresh'
            : 'removed the download'),
        'integrity',
      );
    }
  }
  try {
    await rename(part, final);
  } catch (error) {
    throw diskError(final, error);
  }
}
