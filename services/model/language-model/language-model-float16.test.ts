// The text graph built from a float16 checkpoint (the seed-0 tiny checkpoint converted with
// `loupe convert --dtype float16`), run on the CPU provider, against the float32 reference
// (test/fixtures/model) with a float16 tolerance: prefill logits within 5e-2, greedy ids
// compared and reported. The CUDA provider, the one float16 checkpoints are for, is not
// tested here; ONNX Runtime's CPU provider runs FusedMatMul and SimplifiedLayerNormalization
// through float32 casts it inserts (GroupQueryAttention runs in float16), so the tolerance
// check covers the float16 weights, cache and attention, not float16 matmul arithmetic.
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
import { openCheckpoint } from '../checkpoint/index.js';
import { convertCheckpoint } from '../convert/index.js';
import { eosTokenIds } from '../text-processor/index.js';
import { writeTinyCheckpoint } from '../../../test/helpers/tiny-checkpoint.js';
import { writeTinyModel } from '../tiny/index.js';
import { buildVisionGraph } from '../vision/index.js';
import { TokenEmbeddings } from './embeddings.js';
import { generateGreedy, loadTextModel, type TextModel } from './generate.js';
import { goldenCaseNames, loadGoldenCase, maxAbsDiff } from './goldens.test-helper.js';
import { buildTextGraph, cacheNames } from './text-graph.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const TOLERANCE = 5e-2;
const MAX_NEW = 32;

describe('text model on the float16 tiny checkpoint (seed 0)', () => {
  const root = mkdtempSync(join(tmpdir(), 'loupe-text-f16-'));
  const dir = join(root, 'f16');
  let model: TextModel;
  let eos: number[] = [];
  beforeAll(async () => {
    writeTinyModel({ out: join(root, 'f32'), seed: 0 });
    convertCheckpoint({ from: join(root, 'f32'), to: dir, dtype: 'float16' });
    model = await loadTextModel(openCheckpoint(dir), { session: { intraOpThreads: 1 } });
    eos = eosTokenIds(dir);
  });
  afterAll(async () => {
    await model?.release();
    rmSync(root, { recursive: true, force: true });
  });

  it('builds a float16 graph: float32 inputs_embeds and logits, float16 cache', () => {
    expect(model.graph.type).toBe('float16');
    expect(model.graph.cacheType).toBe('float16');
    const types = (values: readonly InferenceSession.ValueMetadata[]) =>
      Object.fromEntries(values.map((v) => [v.name, v.isTensor ? v.type : 'not a tensor']));
    const inputs = types(model.session.inputMetadata);
    const outputs = types(model.session.outputMetadata);
    expect(inputs['inputs_embeds']).toBe('float32');
    expect(inputs[cacheNames(0).pastKey]).toBe('float16');
    expect(inputs[cacheNames(0).pastValue]).toBe('float16');
    expect(outputs['logits']).toBe('float32');
    expect(outputs[cacheNames(0).presentKey]).toBe('float16');
  });

  it('reads every weight as float16 in place, float16 rotary tables, fp32 norm statistics', () => {
    const graph = ModelProto.decode(model.graph.model.bytes).graph!;
    const external = graph.initializer.filter(
      (t) => t.dataLocation === TensorProto_DataLocation.EXTERNAL,
    );
    expect(external.length).toBeGreaterThan(0);
    for (const t of external)
      expect([t.name, t.dataType]).toEqual([t.name, TensorProto_DataType.FLOAT16]);
    for (const name of ['cos_cache', 'sin_cache']) {
      expect(graph.initializer.find((t) => t.name === name)!.dataType).toBe(
        TensorProto_DataType.FLOAT16,
      );
    }
    const norms = graph.node.filter((n) => n.opType === 'SimplifiedLayerNormalization');
    expect(norms.length).toBe(2 * model.graph.layers + 1);
    for (const n of norms) {
      expect(n.attribute.find((a) => a.name === 'stash_type')!.i).toBe(TensorProto_DataType.FLOAT);
    }
  });

  it('widens the float16 embedding table exactly', () => {
    const f32 = TokenEmbeddings.load(openCheckpoint(join(root, 'f32')));
    const ids = [0, 1, 2, f32.vocab - 1];
    const narrow = model.embeddings.embed(ids);
    const wide = f32.embed(ids);
    // float16 keeps 11 significant bits: relative error at most 2^-11 (normal range).
    for (let i = 0; i < wide.length; i++) {
      expect(Math.abs(narrow[i]! - wide[i]!)).toBeLessThanOrEqual(
        Math.abs(wide[i]!) * 2 ** -11 + 2 ** -24,
      );
    }
  });

  const cases = fixtureCases('tiny-* model goldens', goldenCaseNames('tiny-'), 7);
  it.each(cases)('%s: prefill logits and greedy ids', async (name) => {
    const golden = loadGoldenCase(name);
    const { sequences } = await generateGreedy(
      model,
      [{ ids: golden.inputIds, imageRows: golden.imageRows }],
      { maxNewTokens: MAX_NEW, eosTokenIds: eos },
    );
    const [got] = sequences;
    const diff = maxAbsDiff(got!.prefillLogits, golden.prefillLogits);
    const ids = got!.generatedIds;
    let agree = 0;
    while (agree < ids.length && ids[agree] === golden.generatedIds[agree]) agree++;
    console.log(
      `float16 ${name}: max |Δ| prefill logits ${diff.toExponential(2)}, greedy ids agree on the first ${agree} of ${golden.generatedIds.length}`,
    );
    expect(diff).toBeLessThanOrEqual(TOLERANCE);
    expect(got!.promptIds).toEqual(golden.inputIds);
    expect(agree).toBeGreaterThan(0); // the prefill's argmax; later ids are reported only
  });
});

describe('graph dtypes', () => {
  it('refuses bfloat16 checkpoints in both graphs, naming `loupe convert`', () => {
    const fixtures = JSON.parse(
      readFileSync(new URL('../../../test/fixtures/config/resolved.json', import.meta.url), 'utf8'),
    ) as { cases: Record<string, { config: Record<string, unknown> }> };
    const dir = writeTinyCheckpoint(fixtures.cases.tester!.config, { dtype: 'BF16' });
    try {
      const checkpoint = openCheckpoint(dir);
      expect(checkpoint.dtype).toBe('BF16');
      expect(() => buildTextGraph(checkpoint)).toThrow(/not BF16.*loupe convert/);
      expect(() => buildVisionGraph(checkpoint)).toThrow(/not BF16.*loupe convert/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
