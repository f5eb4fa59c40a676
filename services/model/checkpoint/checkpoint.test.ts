import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseIdefics2Config } from '../config/index.js';
import { elementCount } from '../safetensors/index.js';
import {
  writeTinyCheckpoint,
  type TinyCheckpointOptions,
} from '../../../test/helpers/tiny-checkpoint.js';
import { CheckpointError, openCheckpoint } from './checkpoint.js';
import { expectedTensors } from './expected-tensors.js';

const fixtures = JSON.parse(
  readFileSync(new URL('../../../test/fixtures/config/resolved.json', import.meta.url), 'utf8'),
) as { cases: Record<string, { config: Record<string, unknown> }> };
const TESTER = fixtures.cases.tester!.config;

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function writeCheckpoint(config: Record<string, unknown>, options?: TinyCheckpointOptions): string {
  const dir = writeTinyCheckpoint(config, options);
  dirs.push(dir);
  return dir;
}

describe('expectedTensors', () => {
  it('adds up to the published idefics2-8b parameter count (docs/model.md §9)', () => {
    const config = parseIdefics2Config(fixtures.cases['idefics2-8b']!.config);
    let total = 0;
    for (const shape of expectedTensors(config).values()) total += elementCount(shape);
    expect(total).toBe(8_402_768_112);
  });

  it('has the reference unit-test shapes (docs/model.md §1.6)', () => {
    const shapes = expectedTensors(parseIdefics2Config(TESTER));
    expect(shapes.get('model.connector.perceiver_resampler.latents')).toEqual([2, 64]);
    expect(
      shapes.get('model.connector.perceiver_resampler.layers.0.self_attn.q_proj.weight'),
    ).toEqual([24, 64]);
    expect(
      shapes.get('model.connector.perceiver_resampler.layers.0.self_attn.k_proj.weight'),
    ).toEqual([12, 64]);
    expect(shapes.get('model.connector.perceiver_resampler.layers.1.mlp.gate_proj.weight')).toEqual(
      [256, 64],
    );
    expect(shapes.get('model.connector.modality_projection.gate_proj.weight')).toEqual([56, 32]);
    expect(shapes.get('model.connector.modality_projection.down_proj.weight')).toEqual([64, 56]);
    expect(shapes.get('model.vision_model.embeddings.patch_embedding.weight')).toEqual([
      32, 3, 12, 12,
    ]);
    expect(shapes.get('model.vision_model.embeddings.position_embedding.weight')).toEqual([1, 32]);
    expect(shapes.get('lm_head.weight')).toEqual([100, 64]);
  });

  it('leaves out a tied lm_head', () => {
    expect(
      expectedTensors(parseIdefics2Config({ ...TESTER, tie_word_embeddings: true })).has(
        'lm_head.weight',
      ),
    ).toBe(false);
  });
});

describe('openCheckpoint', () => {
  it('locates every tensor of a single-file checkpoint', () => {
    const dir = writeCheckpoint(TESTER);
    const checkpoint = openCheckpoint(dir);
    expect(checkpoint.config.text.vocabSize).toBe(100);
    expect(checkpoint.dtype).toBe('F32');
    const lmHead = checkpoint.tensors.get('lm_head.weight')!;
    expect(lmHead).toMatchObject({
      file: join(dir, 'model.safetensors'),
      dtype: 'F32',
      shape: [100, 64],
      byteLength: 100 * 64 * 4,
    });
    expect(checkpoint.tensors.size).toBe(expectedTensors(checkpoint.config).size);
  });

  it('follows model.safetensors.index.json across shards, in float16 and bfloat16', () => {
    for (const dtype of ['F16', 'BF16'] as const) {
      const dir = writeCheckpoint(TESTER, { shards: 3, dtype });
      const checkpoint = openCheckpoint(dir);
      expect(checkpoint.dtype).toBe(dtype);
      const files = new Set([...checkpoint.tensors.values()].map((t) => t.file));
      expect(files.size).toBe(3);
    }
  });

  it('names the missing config file', () => {
    const dir = writeCheckpoint(TESTER);
    rmSync(join(dir, 'config.json'));
    expect(() => openCheckpoint(dir)).toThrow(
      new CheckpointError(`${join(dir, 'config.json')} is missing`),
    );
  });

  it('names a missing shard and the index that names it', () => {
    const dir = writeCheckpoint(TESTER, { shards: 2 });
    rmSync(join(dir, 'model-00002-of-00002.safetensors'));
    expect(() => openCheckpoint(dir)).toThrow(
      /model-00002-of-00002\.safetensors is missing \(named in .*model\.safetensors\.index\.json\)/,
    );
  });

  it('names the directory when there are no weights', () => {
    const dir = writeCheckpoint(TESTER);
    rmSync(join(dir, 'model.safetensors'));
    expect(() => openCheckpoint(dir)).toThrow(
      /has no weights: neither model\.safetensors nor model\.safetensors\.index\.json/,
    );
  });

  it('names a missing tensor with its expected shape', () => {
    const dir = writeCheckpoint(TESTER, {
      edit: (t) => t.delete('model.text_model.layers.2.mlp.up_proj.weight'),
    });
    expect(() => openCheckpoint(dir)).toThrow(
      /tensor model\.text_model\.layers\.2\.mlp\.up_proj\.weight \[56, 64\] is missing from .*model\.safetensors/,
    );
  });

  it('names a tensor of the wrong shape, the file and both shapes', () => {
    const dir = writeCheckpoint(TESTER, {
      edit: (t) => t.set('model.connector.perceiver_resampler.latents', [3, 64]),
    });
    expect(() => openCheckpoint(dir)).toThrow(
      /tensor model\.connector\.perceiver_resampler\.latents in .*model\.safetensors has shape \[3, 64\], but config\.json implies \[2, 64\]/,
    );
  });

  it('names an invalid config value', () => {
    const dir = writeCheckpoint(TESTER);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...TESTER, image_token_id: -1 }));
    expect(() => openCheckpoint(dir)).toThrow(
      /config\.json: `image_token_id` must be an integer >= 0, got -1/,
    );
  });
});

describe('checkpoints made elsewhere', () => {
  it('opens a checkpoint saved by the reference (save_pretrained)', () => {
    const dir = new URL('../../../test/fixtures/model/tester', import.meta.url).pathname;
    const checkpoint = openCheckpoint(dir);
    expect(checkpoint.dtype).toBe('F32');
    expect(checkpoint.config.imageTokenId).toBe(99);
    expect(checkpoint.config.perceiver.hiddenSize).toBe(64);
    expect(checkpoint.tensors.size).toBe(expectedTensors(checkpoint.config).size);
  });
});
