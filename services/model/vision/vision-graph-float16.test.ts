// The image encoder built from a float16 checkpoint (the tiny seed-0 checkpoint converted with
// `loupe convert --dtype float16`), run on the CPU provider, against the float32 reference's
// image_hidden_states (test/fixtures/model) with a float16 tolerance. The CUDA provider, the
// one float16 checkpoints are for, is not tested here; note that ONNX Runtime's CPU provider
// runs most float16 nodes (Conv, FusedMatMul, MultiHeadAttention, the norms) through float32
// casts it inserts, so the tolerance check covers the float16 weights and the graph's own
// casts, and the structure test covers the float16 types and finite masks.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { InferenceSession } from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ModelProto,
  TensorProto_DataLocation,
  TensorProto_DataType,
} from '../../../proto/gen/onnx/onnx.js';
import { type Checkpoint, openCheckpoint } from '../checkpoint/index.js';
import { convertCheckpoint } from '../convert/index.js';
import { loadImageProcessorConfig, preprocessImage, type SubImage } from '../image/index.js';
import { createSession, type OnnxModel } from '../onnx/index.js';
import { readSafetensors } from '../safetensors/index.js';
import { writeTinyModel } from '../tiny/index.js';
import { encodeImages } from './encode-images.js';
import { MASK_MIN_FLOAT16 } from './graph-ops.js';
import { buildVisionGraph } from './vision-graph.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const FIXTURES = new URL('../../../test/fixtures/model/', import.meta.url).pathname;
const IMAGES = new URL('../../../test/fixtures/images/', import.meta.url).pathname;
const LIMITS = { maxBytes: 64 << 20, maxPixels: 40_000_000, maxFrames: 100 };
/** float16 weights and activations against the float32 reference. */
const TOLERANCE = 5e-2;

const expected = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8')) as {
  cases: Record<string, { images?: string[]; split?: boolean }>;
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

describe('vision graph on the float16 tiny checkpoint (seed 0)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-vision-f16-'));
  let session: InferenceSession;
  let checkpoint: Checkpoint;
  let model: OnnxModel;
  afterAll(async () => {
    await session?.release();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeAll(async () => {
    writeTinyModel({ out: join(dir, 'f32'), seed: 0 });
    convertCheckpoint({ from: join(dir, 'f32'), to: join(dir, 'f16'), dtype: 'float16' });
    checkpoint = openCheckpoint(join(dir, 'f16'));
    model = buildVisionGraph(checkpoint);
    session = await createSession(model);
  });

  it('reads every weight as float16 in place and masks with finite float16 minima', () => {
    const graph = ModelProto.decode(model.bytes).graph!;
    const external = graph.initializer.filter(
      (t) => t.dataLocation === TensorProto_DataLocation.EXTERNAL,
    );
    const visionWeights = [...checkpoint.tensors.keys()].filter(
      (name) => name.startsWith('model.vision_model.') || name.startsWith('model.connector.'),
    );
    expect(external.map((t) => t.name).sort()).toEqual(visionWeights.sort());
    for (const t of external)
      expect([t.name, t.dataType]).toEqual([t.name, TensorProto_DataType.FLOAT16]);
    // Each layer's attention is an If: without the mask when nothing is padded, else with it.
    const mha = graph.node
      .filter((n) => n.opType === 'If')
      .flatMap((n) => n.attribute.flatMap((a) => a.g?.node ?? []))
      .filter((n) => n.opType === 'MultiHeadAttention');
    expect(mha.length).toBe(2 * checkpoint.config.vision.numHiddenLayers);
    expect(mha.filter((n) => n.input[4] !== undefined).length).toBe(
      checkpoint.config.vision.numHiddenLayers,
    );
    for (const n of mha) {
      expect(n.attribute.find((a) => a.name === 'mask_filter_value')!.f).toBe(MASK_MIN_FLOAT16);
    }
    // The perceiver's softmax runs on float32 casts of the float16 scores (G1).
    const byOutput = new Map(graph.node.flatMap((n) => n.output.map((o) => [o, n] as const)));
    const softmaxes = graph.node.filter((n) => n.opType === 'Softmax');
    expect(softmaxes.length).toBe(checkpoint.config.perceiver.depth);
    for (const n of softmaxes) {
      const add = byOutput.get(n.input[0]!)!;
      expect(byOutput.get(add.input[0]!)!.opType).toBe('Cast');
    }
  });

  it('is a float16 checkpoint with unchanged graph inputs and a float32 output', () => {
    expect(checkpoint.dtype).toBe('F16');
    const types = (values: readonly InferenceSession.ValueMetadata[]) =>
      values.map((v) => [v.name, v.isTensor ? v.type : 'not a tensor']);
    expect(types(session.inputMetadata)).toEqual([
      ['pixels', 'uint8'],
      ['patch_mask', 'bool'],
      ['position_ids', 'int64'],
    ]);
    expect(types(session.outputMetadata)).toEqual([['image_hidden_states', 'float32']]);
  });

  const cases = fixtureCases(
    'tiny-* model goldens with images',
    Object.entries(expected.cases).filter(
      ([name, c]) => name.startsWith('tiny-') && c.images !== undefined && c.images.length > 0,
    ),
    6,
  );
  it.each(cases)(`matches image_hidden_states of %s within ${TOLERANCE}`, async (name, c) => {
    const config = loadImageProcessorConfig(join(dir, 'f16'));
    const subImages: SubImage[] = [];
    for (const file of c.images!) {
      const bytes = readFileSync(join(IMAGES, file));
      const pre = await preprocessImage(bytes, { config, split: c.split!, limits: LIMITS });
      subImages.push(...pre.subImages);
    }
    const out = await encodeImages(session, subImages, checkpoint.config.vision);
    expect(out.dims).toEqual([subImages.length, 64, 64]);
    expect(out.data.every(Number.isFinite)).toBe(true);
    const diff = maxAbsDiff(out.data, golden(name));
    console.log(`float16 ${name}: max |Δ| = ${diff.toExponential(2)}`);
    expect(diff).toBeLessThanOrEqual(TOLERANCE);
  });
});
