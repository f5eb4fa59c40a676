// `npx loupe convert` as a user runs it.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../services/model/index.js';
import { fixturesDir } from './helpers/fixtures.js';
import { repoRoot } from './helpers/service-process.js';
import { writeTinyCheckpoint } from './helpers/tiny-checkpoint.js';
import { writeTinyModel } from '../services/model/index.js';

const run = promisify(execFile);
const loupe = (...args: string[]) =>
  run(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), ...args], { cwd: repoRoot });
const tester = (
  JSON.parse(readFileSync(join(fixturesDir, 'config', 'resolved.json'), 'utf8')) as {
    cases: Record<string, { config: Record<string, unknown> }>;
  }
).cases.tester!.config;

describe('loupe convert', () => {
  const from = writeTinyCheckpoint(tester, { dtype: 'BF16', shards: 2 });
  const work = mkdtempSync(join(tmpdir(), 'loupe-convert-cli-'));
  afterAll(() => {
    rmSync(from, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });

  it('converts a bfloat16 checkpoint to float32 and prints a summary', async () => {
    const out = join(work, 'f32');
    const { stdout } = await loupe('convert', '--model', from, '--out', out, '--dtype', 'float32');
    const summary = JSON.parse(stdout) as { files: string[]; tensors: number; dtype: string };
    expect(summary.dtype).toBe('float32');
    expect(summary.files).toHaveLength(2);
    expect(openCheckpoint(out).dtype).toBe('F32');
  });

  it('fails clearly on bad arguments and a broken checkpoint', async () => {
    await expect(
      loupe('convert', '--model', from, '--out', join(work, 'x'), '--dtype', 'bfloat16'),
    ).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--dtype must be "float32" or "float16", got "bfloat16"/),
    });
    await expect(
      loupe(
        'convert',
        '--model',
        join(work, 'nowhere'),
        '--out',
        join(work, 'y'),
        '--dtype',
        'float16',
      ),
    ).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/config\.json is missing/),
    });
  });

  it('quantizes to 4-bit GPTQ, quiet off a terminal, printing the peak memory', async () => {
    const floatDir = join(work, 'tiny-float');
    writeTinyModel({ out: floatDir, seed: 0 });
    const out = join(work, 'q4');
    const { stdout, stderr } = await loupe(
      'convert',
      '--model',
      floatDir,
      '--out',
      out,
      '--bits',
      '4',
      '--group-size',
      '32',
      '--sym',
    );
    expect(stderr).toBe('');
    const summary = JSON.parse(stdout) as Record<string, unknown>;
    expect(summary).toMatchObject({
      dtype: 'float32',
      quantization: { method: 'gptq', bits: 4, groupSize: 32, sym: true, lmHead: false },
      files: ['model.safetensors'],
    });
    expect(summary.peakRssBytes).toBeGreaterThan(0);
    expect(summary.bytes).toBeLessThan(summary.sourceBytes as number);
    expect(openCheckpoint(out).quantization).toMatchObject({ bits: 4, groupSize: 32, sym: true });
    await expect(
      loupe('convert', '--model', floatDir, '--out', out, '--bits', '8', '--group-size', '32'),
    ).rejects.toMatchObject({ stderr: expect.stringMatching(/pass --force to replace it/) });
  });

  it('refuses bad quantization options with a usage error', async () => {
    const to = join(work, 'never');
    await expect(
      loupe('convert', '--model', from, '--out', to, '--bits', '3'),
    ).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--bits must be 4 or 8, got "3"/),
    });
    await expect(
      loupe('convert', '--model', from, '--out', to, '--bits', '4', '--group-size', '48'),
    ).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--group-size must be 32, 64 or 128/),
    });
    await expect(loupe('convert', '--model', from, '--out', to, '--sym')).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--dtype float32\|float16, --bits 4\|8, or both/),
    });
  });
});
