// `loupe download`: an Idefics2 checkpoint from the Hugging Face Hub into a directory.
import { parseCommandArgs, required } from './args.js';
import { CliError } from './cli-error.js';
import {
  DEFAULT_ENDPOINT,
  downloadCheckpoint,
  HubDownloadError,
  normalizeEndpoint,
  parseRepoSpec,
  type DownloadProgress,
  type RepoSpec,
} from './hub-download.js';

const USAGE_LINE = 'usage: loupe download ORG/NAME[@REVISION] --out DIR [--endpoint URL]';

export async function runDownload(args: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(args, {
    out: { type: 'string' },
    endpoint: { type: 'string' },
  });
  if (positionals.length !== 1) {
    throw new CliError(
      positionals.length === 0
        ? `REPO is required\n${USAGE_LINE}`
        : `expected one REPO, got ${positionals.length}: ${positionals.join(' ')}\n${USAGE_LINE}`,
    );
  }
  const out = required(values.out, '--out');
  // An empty variable counts as unset, as in the Hub's own clients.
  const endpointArg = values.endpoint || process.env.HF_ENDPOINT || DEFAULT_ENDPOINT;
  const token = process.env.HF_TOKEN || undefined;
  let spec: RepoSpec;
  let endpoint: string;
  try {
    spec = parseRepoSpec(positionals[0]!);
    endpoint = normalizeEndpoint(endpointArg);
  } catch (error) {
    if (error instanceof HubDownloadError) throw new CliError(`${error.message}\n${USAGE_LINE}`);
    throw error;
  }

  const progress = process.stderr.isTTY ? new ProgressLine(process.stderr) : undefined;
  const started = performance.now();
  try {
    const summary = await downloadCheckpoint({
      ...spec,
      out,
      endpoint,
      token,
      onProgress: progress && ((p) => progress.update(p)),
    });
    progress?.clear();
    process.stdout.write(
      JSON.stringify({
        out: summary.out,
        repo: summary.repo,
        revision: summary.revision,
        commit: summary.commit,
        files: summary.files,
        downloaded: summary.downloaded,
        bytes: summary.bytes,
        seconds: (performance.now() - started) / 1000,
      }) + '\n',
    );
    return 0;
  } catch (error) {
    progress?.clear();
    if (error instanceof HubDownloadError)
      throw new CliError(error.message, error.kind === 'usage' ? 2 : 1);
    throw error;
  }
}

/** One self-overwriting status line on a terminal: the file, bytes done / total, and the rate. */
class ProgressLine {
  private lastDraw = 0;
  private drawn = false;
  private readonly started = performance.now();

  constructor(private readonly stream: NodeJS.WriteStream) {}

  update(p: DownloadProgress): void {
    const now = performance.now();
    // A few redraws a second are enough to read, and keep a fast download from waiting on the
    // terminal.
    if (now - this.lastDraw < 100) return;
    this.lastDraw = now;
    let text: string;
    if (p.phase === 'verify') {
      text = `verifying ${p.path}`;
    } else {
      const seconds = (now - this.started) / 1000;
      const percent = p.totalBytes > 0 ? Math.floor((100 * p.fetchedBytes) / p.totalBytes) : 100;
      text =
        `${formatBytes(p.fetchedBytes)} / ${formatBytes(p.totalBytes)} (${percent}%)  ` +
        `${formatBytes(seconds > 0 ? p.fetchedBytes / seconds : 0)}/s  ${p.path}`;
    }
    // A line longer than the terminal wraps, and `\r` would then leave the first part behind.
    const width = Math.max(20, (this.stream.columns || 80) - 1);
    this.stream.write(`\r\x1b[K${text.slice(0, width)}`);
    this.drawn = true;
  }

  clear(): void {
    if (this.drawn) this.stream.write('\r\x1b[K');
    this.drawn = false;
  }
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}
