import { describe, expect, it } from 'vitest';
import { referenceSample } from './sampler-reference.test-helper.js';
import { GREEDY, Rng, sample, type SamplingParams } from './sampler.js';

const none = { prompt: new Set<number>(), output: new Map<number, number>() };
const logits = Float32Array.from([1, 3, 2, 0.5, 2.9]);
const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...GREEDY, ...p });
const draws = (p: SamplingParams, n: number, seed = 1n, counts = none) => {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => sample(logits, p, counts, rng).id);
};

describe('sample', () => {
  it('is the argmax when greedy, with log-softmax logprobs of the raw logits', () => {
    const s = sample(logits, GREEDY, none, new Rng(0n), { logprobs: true, topLogprobs: 2 });
    const lse = Math.log([...logits].reduce((a, v) => a + Math.exp(v), 0));
    expect(s.id).toBe(1);
    expect(s.logprob).toBeCloseTo(3 - lse, 10);
    expect(s.top.map((t) => t.id)).toEqual([1, 4]);
  });

  it('draws the same tokens for the same seed, and others for another seed', () => {
    const p = params({ temperature: 1 });
    expect(draws(p, 50, 42n)).toEqual(draws(p, 50, 42n));
    expect(draws(p, 50, 42n)).not.toEqual(draws(p, 50, 43n));
  });

  it('keeps only the top-k, the top-p nucleus and the min-p survivors', () => {
    expect(new Set(draws(params({ temperature: 5, topK: 2 }), 300))).toEqual(new Set([1, 4]));
    // softmax(logits): 1 → 0.40, 4 → 0.36, 2 → 0.15: top-p 0.7 keeps {1, 4}.
    expect(new Set(draws(params({ temperature: 1, topP: 0.7 }), 300))).toEqual(new Set([1, 4]));
    // min-p 0.3: tokens with p >= 0.3 × p(max) = 0.12: {1, 4, 2}.
    expect(new Set(draws(params({ temperature: 1, minP: 0.3 }), 500))).toEqual(new Set([1, 4, 2]));
  });

  it('restricts to the nucleus over a large vocabulary, small or large nucleus alike', () => {
    for (const slope of [0.05, 0.0005]) {
      // Descending logits: the nucleus is a prefix; with the flat slope it has > 256 tokens.
      const vocab = 5000;
      const big = Float32Array.from({ length: vocab }, (_, i) => -slope * i);
      const probs = Array.from(big, (v) => Math.exp(v));
      const z = probs.reduce((a, b) => a + b, 0);
      let size = 0;
      for (let c = 0; size < vocab && c < 0.9; size++) c += probs[size]! / z;
      const rng = new Rng(3n);
      const seen = Array.from(
        { length: 3000 },
        () => sample(big, params({ temperature: 1, topP: 0.9 }), none, rng).id,
      );
      expect(Math.max(...seen), `slope ${slope}`).toBeLessThan(size);
      expect(Math.max(...seen), `slope ${slope}`).toBeGreaterThan(0.8 * size);
      if (slope < 0.001) expect(size).toBeGreaterThan(256);
    }
  });

  it('follows the distribution (temperature 1)', () => {
    const n = 20000;
    const counts = new Array<number>(logits.length).fill(0);
    for (const id of draws(params({ temperature: 1 }), n, 9n)) counts[id]!++;
    const z = [...logits].reduce((a, v) => a + Math.exp(v), 0);
    logits.forEach((v, i) => expect(counts[i]! / n).toBeCloseTo(Math.exp(v) / z, 1));
  });

  it('applies repetition, frequency and presence penalties', () => {
    // Token 1 (3.0) seen in the prompt: 3 / 1.5 = 2 < 2.9, so 4 wins.
    expect(
      sample(
        logits,
        params({ repetitionPenalty: 1.5 }),
        { prompt: new Set([1]), output: new Map() },
        new Rng(0n),
      ).id,
    ).toBe(4);
    // Token 1 generated twice: 3 - 2 × 0.1 - 0.5 = 2.3 < 2.9.
    expect(
      sample(
        logits,
        params({ frequencyPenalty: 0.1, presencePenalty: 0.5 }),
        { prompt: new Set(), output: new Map([[1, 2]]) },
        new Rng(0n),
      ).id,
    ).toBe(4);
  });

  it('draws exactly what the straightforward sampler draws, logprobs included', () => {
    // Rows of a 32k vocabulary (peaked and flat), every restriction and penalty, seeded
    // generators side by side: same ids, same logprobs, bit for bit.
    const vocab = 32_003;
    const next = (() => {
      let a = 12345;
      return () => {
        a = (Math.imul(a, 1103515245) + 12345) >>> 0;
        return a / 2 ** 32;
      };
    })();
    const rows = [4, 0.2].flatMap((spread) =>
      Array.from({ length: 3 }, () =>
        Float32Array.from({ length: vocab }, () => spread * (next() * 2 - 1)),
      ),
    );
    // A tie for the top: the lower index wins on both sides.
    rows[0]![7] = 9;
    rows[0]![9] = 9;
    const counts = {
      prompt: new Set([7, 3, 100, 31_000]),
      output: new Map([
        [9, 2],
        [42, 1],
        [7, 3],
      ]),
    };
    const variants: Array<Partial<SamplingParams>> = [
      {},
      { repetitionPenalty: 1.3 },
      { frequencyPenalty: 0.4, presencePenalty: -0.3, repetitionPenalty: 0.8 },
      { temperature: 0.7 },
      { temperature: 1, topK: 40 },
      { temperature: 1.3, topP: 0.9 },
      { temperature: 0.9, minP: 0.05, repetitionPenalty: 1.2 },
      { temperature: 1, topP: 0.95, topK: 500, frequencyPenalty: 0.5 },
    ];
    for (const variant of variants) {
      const p = params(variant);
      const [mine, theirs] = [new Rng(5n), new Rng(5n)];
      for (const row of rows) {
        for (const c of [none, counts]) {
          const options = { logprobs: true, topLogprobs: 5 };
          const got = sample(row, p, c, mine, options);
          const want = referenceSample(row, p, c, theirs, options);
          expect(got, JSON.stringify(variant)).toEqual(want);
        }
      }
    }
  });
});
