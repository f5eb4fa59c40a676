// The image encoder graph against the reference's image_hidden_states
// (test/fixtures/model, made by transformers 4.54.1; see test/fixtures/README.md).
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { InferenceSession } from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Checkpoint, openCheckpoint } from '../checkpoint/index.js';
import { loadImageProcessorConfig, preprocessImage, type SubImage } from '../image/index.js';
import { createSession } from '../onnx/index.js';
import { readSafetensors } from '../safetensors/index.js';
import { writeTinyModel } from '../tiny/index.js';
import { encodeImages } from './encode-images.js';
import { buildVisionGraph } from './vision-graph.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const FIXTURES = new URL('../../../test/fixtures/model/', import.meta.url).pathname;
const IMAGES = new URL('../../../test/fixtures/images/', import.meta.url).pathname;
const LIMITS = { maxBytes: 64 << 20, maxPixels: 40_000_000, maxFrames: 100 };

interface GoldenCase {
  image_hidden_states_shape: number[] | null;
  /** tester cases: the uint8 pixels, [images, 3, 12, 12] flattened */
  pixels_uint8?: number[];
  /** tiny cases: corpus files, through the processor with splitting on or off */
  images?: string[];
  split?: boolean;
}
const expected = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8')) as {
  tiny_model_sha256: string;
  cases: Record<string, GoldenCase>;
};

function golden(name: string): Float32Array {
  const t = readSafetensors(join(FIXTURES, `${name}.safetensors`)).get('image_hidden_states');
  if (!t) throw new Error(`${name}.safetensors has no image_hidden_states`);
  return t.data as Float32Array;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

describe('vision graph on the reference unit-test checkpoint (tester)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-vision-tester-'));
  let session: InferenceSession;
  afterAll(async () => {
    await session?.release();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeAll(async () => {
    // The model file must sit beside the weights; keep the committed fixture untouched.
    for (const f of ['config.json', 'model.safetensors'])
      copyFileSync(join(FIXTURES, 'tester', f), join(dir, f));
    session = await createSession(buildVisionGraph(openCheckpoint(dir)), { intraOpThreads: 1 });
  });

  it('matches image_hidden_states of tester-two-images within 1e-4', async () => {
    const u8 = Uint8Array.from(expected.cases['tester-two-images']!.pixels_uint8!);
    const plane = 3 * 12 * 12;
    const subImages: SubImage[] = [0, 1].map((i) => ({
      height: 12,
      width: 12,
      pixels: u8.subarray(i * plane, (i + 1) * plane),
    }));
    const out = await encodeImages(session, subImages, { patchSize: 12, numPatchesPerSide: 1 });
    expect(out.dims).toEqual([2, 2, 64]);
    const diff = maxAbsDiff(out.data, golden('tester-two-images'));
    console.log(`tester-two-images max |Δ| = ${diff.toExponential(2)}`);
    expect(diff).toBeLessThanOrEqual(1e-4);
  });
});

describe('vision graph on the tiny checkpoint (seed 0)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-vision-tiny-'));
  let session: InferenceSession;
  let checkpoint: Checkpoint;
  afterAll(async () => {
    await session?.release();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeAll(async () => {
    writeTinyModel({ out: join(dir, 'model'), seed: 0 });
    checkpoint = openCheckpoint(join(dir, 'model'));
    session = await createSession(buildVisionGraph(checkpoint));
  });

  it('references the weights in place instead of copying them into the model', () => {
    const model = buildVisionGraph(checkpoint).bytes.length;
    const weights = statSync(join(dir, 'model', 'model.safetensors')).size;
    expect(model).toBeLessThan(64 * 1024); // the pixel table, shape constants, node list
    expect(weights).toBeGreaterThan(10 * model);
  });

  it('is the checkpoint the goldens were made from', () => {
    const sha = createHash('sha256')
      .update(readFileSync(join(dir, 'model', 'model.safetensors')))
      .digest('hex');
    expect(sha).toBe(expected.tiny_model_sha256);
  });

  const cases = fixtureCases(
    'tiny-* model goldens with images',
    Object.entries(expected.cases).filter(
      ([name, c]) => name.startsWith('tiny-') && c.images !== undefined && c.images.length > 0,
    ),
    6,
  );
  it.each(cases)('matches image_hidden_states of %s within 1e-4', async (name, c) => {
    const config = loadImageProcessorConfig(join(dir, 'model'));
    const subImages: SubImage[] = [];
    for (const file of c.images!) {
      const bytes = readFileSync(join(IMAGES, file));
      const pre = await preprocessImage(bytes, { config, split: c.split!, limits: LIMITS });
      subImages.push(...pre.subImages);
    }
    const started = performance.now();
    const out = await encodeImages(session, subImages, checkpoint.config.vision);
    const ms = performance.now() - started;
    expect(out.dims).toEqual([subImages.length, 64, 64]);
    const diff = maxAbsDiff(out.data, golden(name));
    const sizes = subImages.map((s) => `${s.width}x${s.height}`).join(' ');
    console.log(`${name}: [${sizes}] max |Δ| = ${diff.toExponential(2)}, ${ms.toFixed(0)} ms`);
    expect(diff).toBeLessThanOrEqual(1e-4);
  });
});
