// The container's resource limits, read from its cgroup (v2, then v1): what a process may
// really use, which in a pod is far less than the node's memory and cores that
// os.totalmem() and os.availableParallelism() report.
import { readFileSync } from 'node:fs';
import { availableParallelism, totalmem } from 'node:os';
import { join } from 'node:path';

/** Where the cgroup filesystem is mounted; tests point it at a directory of their own. */
export const CGROUP_ROOT = '/sys/fs/cgroup';

function read(root: string, file: string): string | undefined {
  try {
    return readFileSync(join(root, file), 'utf8').trim();
  } catch {
    return undefined; // not this cgroup version, or no cgroup at all
  }
}

/** The container's memory limit in bytes (cgroup v2, then v1), or undefined when there is none. */
export function containerMemoryLimit(root = CGROUP_ROOT): number | undefined {
  for (const [file, unlimited] of [
    ['memory.max', (s: string) => s === 'max'],
    // v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages).
    ['memory/memory.limit_in_bytes', (s: string) => Number(s) >= 2 ** 60],
  ] as const) {
    const text = read(root, file);
    if (text === undefined) continue;
    if (unlimited(text)) return undefined;
    const bytes = Number(text);
    if (Number.isSafeInteger(bytes) && bytes > 0) return bytes;
  }
  return undefined;
}

/**
 * The container's CPU limit in cores, possibly fractional (quota / period: cgroup v2
 * `cpu.max` "<quota> <period>", v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), or undefined
 * when there is none ("max", -1).
 */
export function containerCpuLimit(root = CGROUP_ROOT): number | undefined {
  const v2 = read(root, 'cpu.max');
  if (v2 !== undefined) {
    const [quota, period = '100000'] = v2.split(/\s+/);
    if (quota === 'max') return undefined;
    return ratio(Number(quota), Number(period));
  }
  for (const dir of ['cpu', 'cpu,cpuacct', 'cpuacct,cpu']) {
    const quota = read(root, `${dir}/cpu.cfs_quota_us`);
    if (quota === undefined) continue;
    if (Number(quota) < 0) return undefined;
    return ratio(Number(quota), Number(read(root, `${dir}/cpu.cfs_period_us`) ?? 100_000));
  }
  return undefined;
}

function ratio(quota: number, period: number): number | undefined {
  if (!(Number.isFinite(quota) && quota > 0 && Number.isFinite(period) && period > 0))
    return undefined;
  return quota / period;
}

/**
 * Threads worth running for CPU-bound work: the cores this process may use (its affinity,
 * as availableParallelism reports), capped by the container's CPU limit rounded up (a limit
 * of 1.5 cores still keeps two threads busy half the time each); at least 1.
 */
export function cpuBoundThreads(root = CGROUP_ROOT): number {
  const limit = containerCpuLimit(root);
  const cores = availableParallelism();
  return Math.max(1, limit === undefined ? cores : Math.min(cores, Math.ceil(limit)));
}

/**
 * A default memory budget: `share` of the container's memory limit, else of the machine's
 * memory divided by `machineDivisor` (a process without a limit shares the machine).
 */
export function defaultMemoryBudget(share: number, machineDivisor = 2, root = CGROUP_ROOT): number {
  const limit = containerMemoryLimit(root);
  return Math.floor(limit !== undefined ? limit * share : (totalmem() / machineDivisor) * share);
}
