// `npx loupe tiny-model`: a checkpoint Loupe's own loaders accept, the same for the same seed.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { loadImageProcessorConfig, openCheckpoint } from '../services/model/index.js';
import { repoRoot } from './helpers/service-process.js';

const run = promisify(execFile);
const loupe = (...args: string[]) =>
  run(process.execPath, [join(repoRoot, 'bin', 'loupe.js'), ...args], { cwd: repoRoot });

describe('loupe tiny-model', () => {
  const work = mkdtempSync(join(tmpdir(), 'loupe-tiny-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('writes a checkpoint that loads, deterministic per seed', async () => {
    const a = join(work, 'a');
    const b = join(work, 'b');
    const c = join(work, 'c');
    await loupe('tiny-model', '--out', a, '--seed', '7');
    await loupe('tiny-model', '--out', b, '--seed', '7');
    await loupe('tiny-model', '--out', c, '--seed', '8');
    const checkpoint = openCheckpoint(a);
    expect(checkpoint.dtype).toBe('F32');
    expect(checkpoint.config.perceiver.nLatents).toBe(64);
    expect(checkpoint.config.vision.patchSize).toBe(14);
    expect(checkpoint.config.vision.numPatchesPerSide).toBe(70);
    const tokenizer = JSON.parse(readFileSync(join(a, 'tokenizer.json'), 'utf8')) as {
      added_tokens: Array<{ id: number; content: string }>;
    };
    const image = tokenizer.added_tokens.find((t) => t.content === '<image>')!;
    expect(checkpoint.config.imageTokenId).toBe(image.id);
    expect(checkpoint.config.text.vocabSize).toBeGreaterThan(image.id);
    expect(loadImageProcessorConfig(a).imageSeqLen).toBe(64);
    const generation = JSON.parse(readFileSync(join(a, 'generation_config.json'), 'utf8')) as {
      eos_token_id: number[];
    };
    expect(generation.eos_token_id).toContain(
      tokenizer.added_tokens.find((t) => t.content === '<end_of_utterance>')!.id,
    );
    expect(readFileSync(join(a, 'chat_template.json'), 'utf8')).toContain('<end_of_utterance>');

    const weights = (dir: string) => readFileSync(join(dir, 'model.safetensors'));
    expect(weights(a).equals(weights(b))).toBe(true);
    expect(weights(a).equals(weights(c))).toBe(false);
  });

  it('refuses bad arguments and a non-empty directory', async () => {
    await expect(
      loupe('tiny-model', '--out', join(work, 'x'), '--size', 'huge'),
    ).rejects.toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--size must be "tiny" or "small", got "huge"/),
    });
    await expect(loupe('tiny-model', '--out', join(work, 'x'), '--seed=-1')).rejects.toMatchObject({
      stderr: expect.stringMatching(/--seed must be an integer/),
    });
    await loupe('tiny-model', '--out', join(work, 'd'));
    await expect(loupe('tiny-model', '--out', join(work, 'd'))).rejects.toMatchObject({
      stderr: expect.stringMatching(/exists and is not empty/),
    });
  });
});

describe('the tiny checkpoint behind the model fixtures', () => {
  it('is still what `loupe tiny-model --seed 0` writes (else regenerate test/fixtures/model)', async () => {
    const work = mkdtempSync(join(tmpdir(), 'loupe-tiny-'));
    try {
      await loupe('tiny-model', '--out', join(work, 'm'), '--seed', '0');
      const expected = JSON.parse(
        readFileSync(join(repoRoot, 'test', 'fixtures', 'model', 'expected.json'), 'utf8'),
      ) as {
        tiny_model_sha256: string;
      };
      const actual = createHash('sha256')
        .update(readFileSync(join(work, 'm', 'model.safetensors')))
        .digest('hex');
      expect(actual).toBe(expected.tiny_model_sha256);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});

describe('the tiny tokenizer', () => {
  it('is the one the text goldens were made with', () => {
    for (const name of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) {
      const asset = readFileSync(join(repoRoot, 'services', 'model', 'tiny', 'tokenizer', name));
      const fixture = readFileSync(join(repoRoot, 'test', 'fixtures', 'text', 'tokenizer', name));
      expect(asset.equals(fixture), name).toBe(true);
    }
  });
});
