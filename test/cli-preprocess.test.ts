// `npx loupe preprocess` as a user runs it: the real command, the file it writes checked
// against the reference's pixel_values and pixel_attention_mask.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../services/model/index.js';
import { writeProcessorConfigs } from './helpers/checkpoint.js';
import { fixtureCases, fixturesDir, loadPreprocessExpectations } from './helpers/fixtures.js';
import { repoRoot } from './helpers/service-process.js';

const run = promisify(execFile);
const loupe = (...args: string[]) =>
  run(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), ...args], { cwd: repoRoot });
const sha256 = (view: ArrayBufferView) =>
  createHash('sha256')
    .update(new Uint8Array(view.buffer, view.byteOffset, view.byteLength))
    .digest('hex');

describe('loupe preprocess', () => {
  const model = writeProcessorConfigs({ split: false });
  const out = mkdtempSync(join(tmpdir(), 'loupe-out-'));
  afterAll(() => {
    rmSync(model, { recursive: true, force: true });
    rmSync(out, { recursive: true, force: true });
  });

  // Four images, split off and on.
  const cases = fixtureCases(
    'preprocess expectations of four images',
    loadPreprocessExpectations().filter((e) =>
      [
        'jpeg-exif6-1200x800.jpg',
        'png-rgba-400x300.png',
        'jpeg-wide-3000x120.jpg',
        'png-tiny-2x2.png',
      ].includes(e.file),
    ),
    8,
  );

  it.each(cases.map((c) => [c.file, c.split, c] as const))(
    'writes the reference pixel_values and mask for %s split=%s',
    async (file, split, expected) => {
      const target = join(out, `${file}-${split}.safetensors`);
      const { stdout } = await loupe(
        'preprocess',
        '--model',
        model,
        '--image',
        join(fixturesDir, 'images', file),
        '--split',
        split ? 'on' : 'off',
        '--out',
        target,
      );
      const summary = JSON.parse(stdout) as {
        sub_images: Array<{ height: number; width: number }>;
        image_tokens: number;
      };
      expect(summary.sub_images).toEqual(
        expected.subImages.map(({ height, width }) => ({ height, width })),
      );
      expect(summary.image_tokens).toBe(64 * expected.subImages.length);
      const tensors = readSafetensors(target);
      const pixelValues = tensors.get('pixel_values')!;
      const mask = tensors.get('pixel_attention_mask')!;
      expect(pixelValues.dtype).toBe('F32');
      expect(pixelValues.shape).toEqual(expected.pixelValuesShape);
      expect(sha256(pixelValues.data)).toBe(expected.pixelValuesSha256);
      expect(mask.dtype).toBe('U8');
      expect(mask.shape).toEqual([
        expected.pixelValuesShape[0],
        expected.pixelValuesShape[2],
        expected.pixelValuesShape[3],
      ]);
      expect(sha256(mask.data)).toBe(expected.pixelAttentionMaskSha256);
    },
  );

  it('uses the checkpoint split default when --split is absent', async () => {
    const { stdout } = await loupe(
      'preprocess',
      '--model',
      model,
      '--image',
      join(fixturesDir, 'images', 'jpeg-1600x1067.jpg'),
      '--out',
      join(out, 'default.safetensors'),
    );
    expect((JSON.parse(stdout) as { sub_images: unknown[] }).sub_images).toHaveLength(1);
  });

  it('fails clearly on bad arguments and bad images', async () => {
    await expect(loupe('preprocess', '--image', 'x.jpg', '--out', 'y')).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--model is required/),
    });
    await expect(
      loupe(
        'preprocess',
        '--model',
        model,
        '--image',
        join(fixturesDir, 'images', 'jpeg-1600x1067.jpg'),
        '--split',
        'maybe',
        '--out',
        join(out, 'x'),
      ),
    ).rejects.toMatchObject({ stderr: expect.stringMatching(/--split must be "on" or "off"/) });
    await expect(
      loupe(
        'preprocess',
        '--model',
        model,
        '--image',
        join(fixturesDir, 'README.md'),
        '--out',
        join(out, 'x'),
      ),
    ).rejects.toMatchObject({ stderr: expect.stringMatching(/format/) });
    await expect(
      loupe(
        'preprocess',
        '--model',
        join(out, 'nowhere'),
        '--image',
        join(fixturesDir, 'images', 'jpeg-1600x1067.jpg'),
        '--out',
        join(out, 'x'),
      ),
    ).rejects.toMatchObject({ stderr: expect.stringMatching(/preprocessor_config\.json/) });
  });
});
