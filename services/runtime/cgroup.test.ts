// The container limits read from cgroup files (v2 and v1), on directories laid out as each.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  containerCpuLimit,
  containerMemoryLimit,
  cpuBoundThreads,
  defaultMemoryBudget,
} from './cgroup.js';

const roots: string[] = [];
afterAll(() => roots.forEach((root) => rmSync(root, { recursive: true, force: true })));

/** A cgroup root holding `files` (path relative to the root -> contents). */
function cgroup(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'loupe-cgroup-'));
  roots.push(root);
  for (const [file, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, file)), { recursive: true });
    writeFileSync(join(root, file), `${text}\n`);
  }
  return root;
}

describe('container limits from cgroup', () => {
  it('reads the memory limit from v2, then v1, and none when unlimited or absent', () => {
    expect(containerMemoryLimit(cgroup({ 'memory.max': '2147483648' }))).toBe(2 ** 31);
    expect(containerMemoryLimit(cgroup({ 'memory.max': 'max' }))).toBeUndefined();
    expect(containerMemoryLimit(cgroup({ 'memory/memory.limit_in_bytes': '1073741824' }))).toBe(
      2 ** 30,
    );
    expect(
      containerMemoryLimit(cgroup({ 'memory/memory.limit_in_bytes': '9223372036854771712' })),
    ).toBeUndefined();
    expect(containerMemoryLimit(cgroup({}))).toBeUndefined();
  });

  it('reads the CPU limit as quota / period from v2 cpu.max and v1 cfs files', () => {
    expect(containerCpuLimit(cgroup({ 'cpu.max': '150000 100000' }))).toBe(1.5);
    expect(containerCpuLimit(cgroup({ 'cpu.max': 'max 100000' }))).toBeUndefined();
    expect(
      containerCpuLimit(
        cgroup({ 'cpu/cpu.cfs_quota_us': '200000', 'cpu/cpu.cfs_period_us': '100000' }),
      ),
    ).toBe(2);
    expect(
      containerCpuLimit(
        cgroup({
          'cpu,cpuacct/cpu.cfs_quota_us': '50000',
          'cpu,cpuacct/cpu.cfs_period_us': '100000',
        }),
      ),
    ).toBe(0.5);
    expect(containerCpuLimit(cgroup({ 'cpu/cpu.cfs_quota_us': '-1' }))).toBeUndefined();
    expect(containerCpuLimit(cgroup({ 'cpu.max': 'garbage' }))).toBeUndefined();
    expect(containerCpuLimit(cgroup({}))).toBeUndefined();
  });

  it('sizes CPU-bound threads by the limit rounded up, never above the cores, at least 1', () => {
    expect(cpuBoundThreads(cgroup({ 'cpu.max': '50000 100000' }))).toBe(1);
    expect(cpuBoundThreads(cgroup({ 'cpu.max': '150000 100000' }))).toBe(
      Math.min(2, availableParallelism()),
    );
    expect(cpuBoundThreads(cgroup({ 'cpu.max': '6400000 100000' }))).toBe(availableParallelism());
    expect(cpuBoundThreads(cgroup({}))).toBe(availableParallelism());
  });

  it('defaults a memory budget to a share of the container limit', () => {
    expect(defaultMemoryBudget(0.5, 2, cgroup({ 'memory.max': '2147483648' }))).toBe(2 ** 30);
    expect(defaultMemoryBudget(0.5, 2, cgroup({}))).toBeGreaterThan(0);
  });
});
