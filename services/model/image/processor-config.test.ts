import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  DEFAULT_IMAGE_PROCESSOR_CONFIG,
  loadImageProcessorConfig,
  processorConfigFiles,
} from './processor-config.js';

/** idefics2-8b's preprocessor_config.json (docs/model.md §1.7). */
const IDEFICS2_8B = {
  do_convert_rgb: true,
  do_image_splitting: true,
  do_normalize: true,
  do_pad: true,
  do_rescale: true,
  do_resize: true,
  image_mean: [0.5, 0.5, 0.5],
  image_processor_type: 'Idefics2ImageProcessor',
  image_std: [0.5, 0.5, 0.5],
  processor_class: 'Idefics2Processor',
  resample: 2,
  rescale_factor: 0.00392156862745098,
  size: { longest_edge: 980, shortest_edge: 378 },
};

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function modelDir(files: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-config-'));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}

describe('loadImageProcessorConfig', () => {
  it('reads idefics2-8b into the default config', () => {
    const dir = modelDir({
      'preprocessor_config.json': IDEFICS2_8B,
      'processor_config.json': { image_seq_len: 64, processor_class: 'Idefics2Processor' },
    });
    expect(loadImageProcessorConfig(dir)).toEqual(DEFAULT_IMAGE_PROCESSOR_CONFIG);
  });

  it('takes -base settings and accepts a scalar mean/std', () => {
    const dir = modelDir({
      'preprocessor_config.json': {
        ...IDEFICS2_8B,
        do_image_splitting: false,
        image_mean: 0.25,
        image_std: 2,
      },
      'processor_config.json': { image_seq_len: 16 },
    });
    expect(loadImageProcessorConfig(dir)).toMatchObject({
      doImageSplitting: false,
      imageMean: [0.25, 0.25, 0.25],
      imageStd: [2, 2, 2],
      imageSeqLen: 16,
    });
  });

  it('falls back to perceiver_config.resampler_n_latents, then to 64', () => {
    const withConfig = modelDir({
      'preprocessor_config.json': IDEFICS2_8B,
      'config.json': { perceiver_config: { resampler_n_latents: 32 } },
    });
    expect(loadImageProcessorConfig(withConfig).imageSeqLen).toBe(32);
    const bare = modelDir({ 'preprocessor_config.json': IDEFICS2_8B });
    expect(loadImageProcessorConfig(bare).imageSeqLen).toBe(64);
    const noSeqLen = modelDir({
      'preprocessor_config.json': IDEFICS2_8B,
      'processor_config.json': { processor_class: 'Idefics2Processor' },
      'config.json': { perceiver_config: { resampler_n_latents: 8 } },
    });
    expect(loadImageProcessorConfig(noSeqLen).imageSeqLen).toBe(8);
  });

  it('requires preprocessor_config.json', () => {
    const dir = modelDir({});
    expect(() => loadImageProcessorConfig(dir)).toThrow(/cannot read .*preprocessor_config\.json/);
  });

  it.each([
    [
      'resample',
      { resample: 3 },
      /preprocessor_config\.json: `resample` must be 2 \(PIL BILINEAR\).*got 3/,
    ],
    [
      'missing flag',
      { do_resize: undefined },
      /preprocessor_config\.json: `do_resize` must be a boolean, missing/,
    ],
    ['ill-typed flag', { do_pad: 'yes' }, /`do_pad` must be a boolean, got "yes"/],
    [
      'size',
      { size: { longest_edge: 980 } },
      /`size\.shortest_edge` must be a positive integer, missing/,
    ],
    ['size type', { size: 980 }, /`size` must be an object with `shortest_edge`, got 980/],
    [
      'fixed size',
      { size: { height: 224, width: 224 } },
      /`size` must have `shortest_edge` and `longest_edge`/,
    ],
    [
      'edge',
      { size: { shortest_edge: 378.5, longest_edge: 980 } },
      /`size\.shortest_edge` must be a positive integer, got 378\.5/,
    ],
    [
      'rescale',
      { rescale_factor: '1/255' },
      /`rescale_factor` must be a positive number, got "1\/255"/,
    ],
    [
      'mean',
      { image_mean: [0.5, 0.5] },
      /`image_mean` must be a number or a list of 3 numbers, got \[0\.5,0\.5\]/,
    ],
    [
      'std',
      { image_std: [0.5, 0, 0.5] },
      /`image_std` must be a number or a list of 3 non-zero numbers, got \[0\.5,0,0\.5\]/,
    ],
  ])('names the file, field and value: %s', (_, patch, message) => {
    const dir = modelDir({ 'preprocessor_config.json': { ...IDEFICS2_8B, ...patch } });
    expect(() => loadImageProcessorConfig(dir)).toThrow(message);
  });

  it('refuses invalid JSON and bad image_seq_len', () => {
    expect(() =>
      loadImageProcessorConfig(modelDir({ 'preprocessor_config.json': '{"do_resize": tru' })),
    ).toThrow(/preprocessor_config\.json is not valid JSON/);
    expect(() =>
      loadImageProcessorConfig(modelDir({ 'preprocessor_config.json': '[1, 2]' })),
    ).toThrow(/preprocessor_config\.json must hold a JSON object, got \[1,2\]/);
    const dir = modelDir({
      'preprocessor_config.json': IDEFICS2_8B,
      'processor_config.json': { image_seq_len: '64' },
    });
    expect(() => loadImageProcessorConfig(dir)).toThrow(
      /processor_config\.json: `image_seq_len` must be a positive integer, got "64"/,
    );
  });
});

describe('processorConfigFiles', () => {
  it('writes what loadImageProcessorConfig reads back', () => {
    const config = {
      ...DEFAULT_IMAGE_PROCESSOR_CONFIG,
      doImageSplitting: false,
      imageSeqLen: 16,
      longestEdge: 700,
    };
    expect(loadImageProcessorConfig(modelDir(processorConfigFiles(config)))).toEqual(config);
  });

  it('writes idefics2-8b preprocessor_config.json for the default config', () => {
    expect(
      processorConfigFiles(DEFAULT_IMAGE_PROCESSOR_CONFIG)['preprocessor_config.json'],
    ).toEqual(IDEFICS2_8B);
  });
});
