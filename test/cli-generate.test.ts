// `npx loupe generate` and `npx loupe encode` end to end, in-process, against the reference's
// goldens for the seed-0 tiny checkpoint (test/fixtures/model/).
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors, writeTinyModel } from '../services/model/index.js';
import { fixtureCases, fixturesDir } from './helpers/fixtures.js';
import { repoRoot } from './helpers/service-process.js';

const run = promisify(execFile);
const loupe = (...args: string[]) =>
  run(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), ...args], {
    cwd: repoRoot,
    maxBuffer: 64 << 20,
  });

interface Case {
  prompt?: string;
  images?: string[];
  split?: boolean;
  generated_ids: number[];
}
const expected = JSON.parse(readFileSync(join(fixturesDir, 'model', 'expected.json'), 'utf8')) as {
  cases: Record<string, Case>;
};
const tinyCases = fixtureCases(
  'tiny-* model goldens',
  Object.entries(expected.cases).filter(([name]) => name.startsWith('tiny-')),
  7,
);
const maxAbsDiff = (a: Float32Array, b: Float32Array) => {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
};

describe('loupe generate and encode on the tiny checkpoint', () => {
  const work = mkdtempSync(join(tmpdir(), 'loupe-generate-'));
  const model = join(work, 'tiny');
  beforeAll(() => writeTinyModel({ out: model, seed: 0 }));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it.each(tinyCases)('generates what the reference generates: %s', async (name, c) => {
    const golden = readSafetensors(join(fixturesDir, 'model', `${name}.safetensors`));
    const logitsOut = join(work, `${name}-logits.safetensors`);
    const args = [
      'generate',
      '--model',
      model,
      '--prompt',
      c.prompt!,
      '--max-new-tokens',
      '32',
      '--json',
      '--logits-out',
      logitsOut,
    ];
    for (const image of c.images ?? []) args.push('--image', join(fixturesDir, 'images', image));
    if (c.images?.length) args.push('--split', c.split ? 'on' : 'off');
    const { stdout } = await loupe(...args);
    const result = JSON.parse(stdout) as {
      prompt_token_ids: number[];
      token_ids: number[];
      text: string;
    };
    expect(result.prompt_token_ids).toEqual(
      [...(golden.get('input_ids')!.data as BigInt64Array)].map(Number),
    );
    expect(result.token_ids).toEqual(c.generated_ids);
    expect(typeof result.text).toBe('string');
    const logits = readSafetensors(logitsOut).get('logits')!.data as Float32Array;
    expect(
      maxAbsDiff(logits, golden.get('prefill_logits')!.data as Float32Array),
    ).toBeLessThanOrEqual(1e-3);
  });

  it('encodes an image as the reference does', async () => {
    const out = join(work, 'encoded.safetensors');
    const { stdout } = await loupe(
      'encode',
      '--model',
      model,
      '--image',
      join(fixturesDir, 'images', 'jpeg-1600x1067.jpg'),
      '--split',
      'on',
      '--out',
      out,
    );
    expect(
      (JSON.parse(stdout) as { image_hidden_states_shape: number[] }).image_hidden_states_shape,
    ).toEqual([5, 64, 64]);
    const ours = readSafetensors(out).get('image_hidden_states')!.data as Float32Array;
    const golden = readSafetensors(
      join(fixturesDir, 'model', 'tiny-one-image-split-on.safetensors'),
    ).get('image_hidden_states')!;
    expect(maxAbsDiff(ours, golden.data as Float32Array)).toBeLessThanOrEqual(1e-4);
  });

  it('refuses a prompt whose <image> count differs from the images, with both numbers', async () => {
    await expect(
      loupe(
        'generate',
        '--model',
        model,
        '--prompt',
        'no placeholder',
        '--image',
        join(fixturesDir, 'images', 'png-tiny-2x2.png'),
        '--max-new-tokens',
        '4',
      ),
    ).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/0 <image> placeholder\(s\) but 1 image\(s\)/),
    });
  });
});
