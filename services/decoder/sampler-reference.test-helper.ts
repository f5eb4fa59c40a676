// The sampler as it was before the fast path (docs/decoder-engine.md, "A step's host work"):
// kept, unchanged but for its name, so that sampler.test.ts can check that sampler.ts draws
// exactly the same tokens and logprobs for every parameter combination.
import type { Rng, SamplingParams } from './sampler.js';

interface TokenCounts {
  /** Tokens of the prompt (for the repetition penalty). */
  prompt: ReadonlySet<number>;
  /** Times each token was generated so far. */
  output: ReadonlyMap<number, number>;
}

interface Sampled {
  id: number;
  /** log p(id) under the model's distribution; set when logprobs were asked. */
  logprob: number;
  /** The `topLogprobs` most likely tokens, most likely first. */
  top: Array<{ id: number; logprob: number }>;
}

/** log-softmax of `logits` (float64 accumulation). */
function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(logits, (v) => v - lse);
}

function topIndices(values: ArrayLike<number>, k: number): number[] {
  const best: number[] = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (best.length === k && v <= values[best[k - 1]!]!) continue;
    let at = best.length === k ? k - 1 : best.length;
    if (best.length < k) best.push(i);
    while (at > 0 && values[best[at - 1]!]! < v) {
      best[at] = best[at - 1]!;
      at--;
    }
    best[at] = i;
  }
  return best;
}

/**
 * Samples one token from `logits` (one row, [vocab]). `rng` is the request's own generator;
 * it is advanced once per sampled (non-greedy) token.
 */
export function referenceSample(
  logits: Float32Array,
  params: SamplingParams,
  counts: TokenCounts,
  rng: Rng,
  { logprobs = false, topLogprobs = 0 }: { logprobs?: boolean; topLogprobs?: number } = {},
): Sampled {
  const x = new Float64Array(logits);
  if (params.repetitionPenalty !== 1) {
    const seen = new Set([...counts.prompt, ...counts.output.keys()]);
    for (const id of seen) {
      const v = x[id]!;
      x[id] = v > 0 ? v / params.repetitionPenalty : v * params.repetitionPenalty;
    }
  }
  if (params.frequencyPenalty !== 0 || params.presencePenalty !== 0) {
    for (const [id, n] of counts.output) {
      x[id] = x[id]! - params.frequencyPenalty * n - params.presencePenalty;
    }
  }

  let id: number;
  if (params.temperature === 0) {
    id = 0;
    for (let i = 1; i < x.length; i++) if (x[i]! > x[id]!) id = i;
  } else {
    id = draw(x, params, rng);
  }

  if (!logprobs) return { id, logprob: 0, top: [] };
  const lp = logSoftmax(logits);
  return {
    id,
    logprob: lp[id]!,
    top: topIndices(lp, topLogprobs).map((t) => ({ id: t, logprob: lp[t]! })),
  };
}

/** Candidates tried before sorting the whole vocabulary for top-p / min-p. */
const FIRST_CANDIDATES = 256;

/**
 * A draw from softmax(x / T) restricted by top-k, top-p and min-p. Without any restriction it
 * is one pass over the vocabulary; with top-p or min-p it looks at the FIRST_CANDIDATES most
 * likely tokens first and sorts the whole vocabulary only when the nucleus is larger.
 */
function draw(x: Float64Array, params: SamplingParams, rng: Rng): number {
  const { temperature, topK, topP, minP } = params;
  let max = -Infinity;
  for (const v of x) if (v > max) max = v;
  let total = 0;
  for (const v of x) total += Math.exp((v - max) / temperature);

  if (topK === 0 && topP >= 1 && minP <= 0) {
    let u = rng.next() * total;
    for (let i = 0; i < x.length; i++) {
      u -= Math.exp((x[i]! - max) / temperature);
      if (u < 0) return i;
    }
    return x.length - 1;
  }

  const limited = topK > 0 && topK < x.length;
  let order = topIndices(x, limited ? topK : Math.min(FIRST_CANDIDATES, x.length));
  let p = order.map((i) => Math.exp((x[i]! - max) / temperature));
  // top-k renormalizes over its k tokens; otherwise probabilities are over the vocabulary.
  if (limited) total = p.reduce((a, b) => a + b, 0);
  const covered = p.reduce((a, b) => a + b, 0) / total;
  const minFloor = minP * (p[0]! / total);
  const enough =
    limited ||
    order.length === x.length ||
    ((topP >= 1 || covered >= topP) && (minP <= 0 || p.at(-1)! / total < minFloor));
  if (!enough) {
    order = Array.from(x.keys()).sort((a, b) => x[b]! - x[a]!);
    p = order.map((i) => Math.exp((x[i]! - max) / temperature));
  }
  let keep = p.length;
  if (minP > 0) {
    while (keep > 1 && p[keep - 1]! / total < minFloor) keep--;
  }
  if (topP < 1) {
    let cumulative = 0;
    for (let i = 0; i < keep; i++) {
      cumulative += p[i]! / total;
      if (cumulative >= topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += p[i]!;
  let u = rng.next() * kept;
  for (let i = 0; i < keep; i++) {
    u -= p[i]!;
    if (u < 0) return order[i]!;
  }
  return order[keep - 1]!;
}
