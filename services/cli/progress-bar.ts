// A one-line progress bar for long commands, drawn only when the stream is a terminal (logs
// and pipes stay quiet), redrawn at most a few times a second.
import type { WriteStream } from 'node:tty';

export interface ProgressBar {
  update(done: number, total: number): void;
  /** Ends the line (when one was drawn). */
  done(): void;
}

const WIDTH = 30;

export function progressBar(stream: NodeJS.WriteStream | WriteStream, label: string): ProgressBar {
  if (!stream.isTTY) return { update: () => {}, done: () => {} };
  const started = performance.now();
  let last = 0;
  let drawn = false;
  return {
    update(done, total) {
      const now = performance.now();
      if (now - last < 200 && done < total) return;
      last = now;
      const share = total > 0 ? Math.min(1, done / total) : 1;
      const filled = Math.round(share * WIDTH);
      const rate = done / 2 ** 20 / Math.max(1e-3, (now - started) / 1000);
      stream.write(
        `\r${label} [${'#'.repeat(filled)}${' '.repeat(WIDTH - filled)}] ${(share * 100).toFixed(0).padStart(3)}%  ${(done / 2 ** 30).toFixed(2)}/${(total / 2 ** 30).toFixed(2)} GiB  ${rate.toFixed(0)} MiB/s`,
      );
      drawn = true;
    },
    done() {
      if (drawn) stream.write('\n');
      drawn = false;
    },
  };
}
