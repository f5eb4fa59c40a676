// Parity of the text graph + host embeddings + greedy loop with the reference (transformers
// 4.54.1, float32): prefill logits at the last prompt position within 1e-3 and identical
// greedy ids, on the reference-saved tester checkpoint and the seed-0 tiny checkpoint. The
// image rows are the reference's own vision+connector output, so only the text side is
// tested here.
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../checkpoint/index.js';
import { eosTokenIds } from '../text-processor/index.js';
import { generateGreedy, loadTextModel, type TextModel } from './generate.js';
import {
  copyTesterCheckpoint,
  goldenCaseNames,
  loadGoldenCase,
  makeTinyCheckpoint,
  maxAbsDiff,
} from './goldens.test-helper.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const TOLERANCE = 1e-3;
const MAX_NEW = 32;

const suites = [
  { prefix: 'tester-', make: copyTesterCheckpoint, count: 2 },
  { prefix: 'tiny-', make: makeTinyCheckpoint, count: 7 },
];

for (const { prefix, make, count } of suites) {
  describe(`text model parity: ${prefix}*`, () => {
    let dir = '';
    let model: TextModel;
    let eos: number[] = [];
    beforeAll(async () => {
      dir = make();
      model = await loadTextModel(openCheckpoint(dir), { session: { intraOpThreads: 1 } });
      eos = eosTokenIds(dir);
    });
    afterAll(async () => {
      await model?.release();
      rmSync(dir, { recursive: true, force: true });
    });

    const cases = fixtureCases(`${prefix}* model goldens`, goldenCaseNames(prefix), count);
    it.each(cases)('%s: prefill logits and greedy ids', async (name) => {
      const golden = loadGoldenCase(name);
      const { sequences } = await generateGreedy(
        model,
        [{ ids: golden.inputIds, imageRows: golden.imageRows }],
        { maxNewTokens: MAX_NEW, eosTokenIds: eos },
      );
      const [got] = sequences;
      const diff = maxAbsDiff(got!.prefillLogits, golden.prefillLogits);
      console.log(`${name}: max |Δ| prefill logits ${diff.toExponential(2)}`);
      expect(diff).toBeLessThanOrEqual(TOLERANCE);
      expect(got!.promptIds).toEqual(golden.inputIds);
      expect(got!.generatedIds).toEqual(golden.generatedIds);
    });
  });
}
