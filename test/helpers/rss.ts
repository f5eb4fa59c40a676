// Resident memory of a process, as the kernel counts it (/proc/<pid>/status), for drills that
// bound what a service holds: now (VmRSS), its peak (VmHWM), and a reset of that peak.
import { readFileSync, writeFileSync } from 'node:fs';

const MiB = 2 ** 20;

function statusField(pid: number, name: 'VmRSS' | 'VmHWM'): number {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
  if (!match) throw new Error(`/proc/${pid}/status has no ${name}`);
  return Number(match[1]) * 1024;
}

/** Resident set size now, bytes. */
export const residentBytes = (pid: number) => statusField(pid, 'VmRSS');

/** The largest resident set size since the process started or since resetPeakResident, bytes. */
export const peakResidentBytes = (pid: number) => statusField(pid, 'VmHWM');

/** Resets the peak (VmHWM) to the current resident size (Linux: clear_refs 5). */
export function resetPeakResident(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

/**
 * Waits until resident memory holds still (changes by less than `toleranceBytes` over
 * `quietMs`), or `timeoutMs` pass; resolves with it. Freed memory goes back to the kernel a
 * little after the work that held it ends (GC, allocator trimming).
 */
export async function settledResidentBytes(
  pid: number,
  { quietMs = 1500, toleranceBytes = 4 * MiB, timeoutMs = 15_000 } = {},
): Promise<number> {
  const started = Date.now();
  let last = residentBytes(pid);
  let stableSince = Date.now();
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const now = residentBytes(pid);
    if (Math.abs(now - last) > toleranceBytes) {
      last = now;
      stableSince = Date.now();
    }
    if (Date.now() - stableSince >= quietMs || Date.now() - started >= timeoutMs) return now;
  }
}

export const mib = (bytes: number) => Math.round(bytes / MiB);
