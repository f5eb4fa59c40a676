// Parity of GPTQ checkpoints run by Loupe (MatMulNBits, float32 activations) with the
// reference (transformers 4.54.1, float32) run on the dequantized weights: prefill logits at
// the last prompt position within 1e-3 and 32 identical greedy tokens, for checkpoints that
// `loupe convert --bits` writes (tiny and small, 4 and 8 bits, symmetric and not, groups of
// 32 and 128, lm_head on and off, and the vision side quantized too: its image_hidden_states
// within 1e-4) and one written by the fixture script's own quantizer.
// Goldens: test/fixtures/model/quant, made by make_quant_fixtures.py (see its docstring).
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../checkpoint/index.js';
import { convertCheckpoint } from '../convert/index.js';
import { loadImageProcessorConfig, preprocessImage } from '../image/index.js';
import { createSession } from '../onnx/index.js';
import { readSafetensors } from '../safetensors/index.js';
import { eosTokenIds } from '../text-processor/index.js';
import { generateGreedy, loadTextModel, type TextModel } from '../language-model/index.js';
import { modelFixtures, maxAbsDiff } from '../language-model/goldens.test-helper.js';
import { writeTinyModel } from '../tiny/index.js';
import { buildVisionGraph, encodeImages } from '../vision/index.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const TOLERANCE = 1e-3;
const quantFixtures = join(modelFixtures, 'quant');

interface Case {
  base: 'tiny' | 'small';
  bits: 4 | 8;
  group_size: number;
  sym: boolean;
  lm_head: boolean;
  vision_bits: 4 | 8 | null;
  writer: 'loupe' | 'python';
  checkpoint_sha256: string;
  prompts: Record<string, { generated_ids: number[]; images: string[] }>;
}
const expected = JSON.parse(readFileSync(join(quantFixtures, 'expected.json'), 'utf8')) as {
  bases: Record<string, { model_sha256: string }>;
  max_new_tokens: number;
  cases: Record<string, Case>;
};
const cases = fixtureCases(
  'cases of test/fixtures/model/quant/expected.json',
  Object.entries(expected.cases),
  6,
);

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

function golden(name: string, prompt: string) {
  const file = readSafetensors(join(quantFixtures, `${name}-${prompt}.safetensors`));
  const rows = file.get('image_hidden_states');
  return {
    ids: Array.from(file.get('input_ids')!.data as BigInt64Array, Number),
    logits: Float32Array.from(file.get('prefill_logits')!.data as Float32Array),
    ...(rows ? { imageRows: Float32Array.from(rows.data as Float32Array) } : {}),
  };
}

const work = mkdtempSync(join(tmpdir(), 'loupe-quant-parity-'));
const bases = new Map<string, string>();
/** The seed-0 base checkpoint the fixtures were made from (made once per run). */
function base(size: 'tiny' | 'small'): string {
  let dir = bases.get(size);
  if (!dir) {
    dir = join(work, `base-${size}`);
    writeTinyModel({ out: dir, seed: 0, size });
    expect(sha256(join(dir, 'model.safetensors')), `seed-0 ${size} checkpoint changed`).toBe(
      expected.bases[size]!.model_sha256,
    );
    bases.set(size, dir);
  }
  return dir;
}
afterAll(() => rmSync(work, { recursive: true, force: true }));

it('covers every combination the issue names', () => {
  const got = cases.map(([, c]) => c);
  expect(cases.length).toBeGreaterThanOrEqual(5);
  for (const bits of [4, 8]) expect(got.some((c) => c.bits === bits)).toBe(true);
  for (const g of [32, 128]) expect(got.some((c) => c.group_size === g)).toBe(true);
  for (const sym of [true, false]) expect(got.some((c) => c.sym === sym)).toBe(true);
  for (const b of ['tiny', 'small']) expect(got.some((c) => c.base === b)).toBe(true);
  expect(got.some((c) => c.writer === 'python')).toBe(true);
  expect(got.some((c) => c.lm_head)).toBe(true);
  expect(got.some((c) => c.vision_bits === 8)).toBe(true);
});

describe.each(cases)('GPTQ parity: %s', (name, c) => {
  let dir = '';
  let model: TextModel;
  let eos: number[] = [];
  beforeAll(async () => {
    dir = join(work, name);
    if (c.writer === 'loupe') {
      convertCheckpoint({
        from: base(c.base),
        to: dir,
        quantize: {
          bits: c.bits,
          groupSize: c.group_size,
          sym: c.sym,
          lmHead: c.lm_head,
          ...(c.vision_bits ? { visionBits: c.vision_bits } : {}),
        },
      });
    } else {
      // The fixture script's own GPTQ checkpoint, beside the base's tokenizer files.
      dir = mkdtempSync(join(work, `${name}-`));
      for (const f of ['config.json', 'generation_config.json', 'model.safetensors'])
        copyFileSync(join(quantFixtures, name, f), join(dir, f));
    }
    expect(
      sha256(join(dir, 'model.safetensors')),
      'quantized checkpoint differs from the one the goldens were made from (rerun make_quant_fixtures.py)',
    ).toBe(c.checkpoint_sha256);
    const checkpoint = openCheckpoint(dir);
    expect(checkpoint.quantization).toMatchObject({ bits: c.bits, groupSize: c.group_size });
    model = await loadTextModel(checkpoint, { session: { intraOpThreads: 1 } });
    eos = eosTokenIds(dir);
  }, 120_000);
  afterAll(async () => {
    await model?.release();
  });

  const prompts = fixtureCases(`${name} prompts`, Object.keys(c.prompts), 2);
  it.each(prompts)('%s prompt: prefill logits and greedy ids', async (prompt) => {
    const g = golden(name, prompt);
    const { sequences } = await generateGreedy(model, [{ ids: g.ids, imageRows: g.imageRows }], {
      maxNewTokens: expected.max_new_tokens,
      eosTokenIds: eos,
    });
    const [got] = sequences;
    const diff = maxAbsDiff(got!.prefillLogits, g.logits);
    console.log(`${name}/${prompt}: max |Δ| prefill logits ${diff.toExponential(2)}`);
    expect(diff).toBeLessThanOrEqual(TOLERANCE);
    expect(got!.generatedIds).toEqual(c.prompts[prompt]!.generated_ids);
  });

  // Defined only for cases that quantize the vision side (nothing is skipped).
  if (c.vision_bits !== null) {
    it('vision graph: image_hidden_states within 1e-4 of the reference on dequantized weights', async () => {
      const checkpoint = openCheckpoint(dir);
      const graph = buildVisionGraph(checkpoint);
      expect(graph.weightFormat).toBe(`gptq-${c.vision_bits}bit-g${c.group_size}-sym`);
      const session = await createSession(graph, { intraOpThreads: 1 });
      try {
        const config = loadImageProcessorConfig(dir);
        const [file] = c.prompts.image!.images;
        const pre = await preprocessImage(
          readFileSync(join(modelFixtures, '..', 'images', file!)),
          {
            config,
            split: false,
            limits: { maxBytes: 64 << 20, maxPixels: 40_000_000, maxFrames: 100 },
          },
        );
        const out = await encodeImages(session, pre.subImages, checkpoint.config.vision);
        const diff = maxAbsDiff(out.data, golden(name, 'image').imageRows!);
        console.log(`${name}: vision max |Δ| ${diff.toExponential(2)}`);
        expect(diff).toBeLessThanOrEqual(1e-4);
      } finally {
        await session.release();
      }
    });
  }
});
