// Choosing the next token from a row of logits, per request: penalties, temperature, top-k,
// top-p, min-p, then a draw from a generator seeded per request (so a seeded request samples
// the same tokens whatever else shares its batch), or the argmax when temperature is 0.
//
// Order, as vLLM applies them: repetition penalty (prompt and output tokens: positive logits
// divided by it, negative ones multiplied), frequency and presence penalties (output tokens:
// logit -= frequency × count + presence), temperature, then top-k, top-p and min-p on the
// resulting distribution. Logprobs are those of the model's own distribution (log-softmax of
// the raw logits), as vLLM returns by default.
//
// Cost (docs/decoder-engine.md, "A step's host work"): this runs once per sequence per step
// over a row of the vocabulary (32,003 for idefics2-8b), so it does no more than it must. A
// greedy row is one pass over the float32 logits, reading the penalized value only for the
// tokens seen; a sampled row copies the penalized row into a reused float64 buffer and keeps
// the exponentials it computes for the total, so the draw does not compute them again; the
// log-softmax is computed only when logprobs are asked, without a row of its own. Every sum
// and comparison is the one the straightforward version makes, in the same order, so the
// tokens and logprobs are bit for bit the same (sampler.test.ts checks against
// sampler-reference.test-helper.ts).

export interface SamplingParams {
  /** 0: greedy. */
  temperature: number;
  /** (0, 1]; 1: off. */
  topP: number;
  /** 0: off. */
  topK: number;
  /** [0, 1]; 0: off. */
  minP: number;
  /** > 0; 1: off. */
  repetitionPenalty: number;
  /** [-2, 2]; 0: off. */
  presencePenalty: number;
  /** [-2, 2]; 0: off. */
  frequencyPenalty: number;
}

export const GREEDY: SamplingParams = {
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
};

/** xoshiro128** over 32-bit state, seeded with splitmix32 from a 64-bit seed. */
export class Rng {
  #s = new Uint32Array(4);

  constructor(seed: bigint) {
    let x =
      Number(BigInt.asUintN(32, seed)) ^
      Math.imul(Number(BigInt.asUintN(32, seed >> 32n)), 0x9e3779b9);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** Uniform in [0, 1), 32 bits of randomness. */
  next(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result / 2 ** 32;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export interface TokenCounts {
  /** Tokens of the prompt (for the repetition penalty). */
  prompt: ReadonlySet<number>;
  /** Times each token was generated so far. */
  output: ReadonlyMap<number, number>;
}

export interface Sampled {
  id: number;
  /** log p(id) under the model's distribution; set when logprobs were asked. */
  logprob: number;
  /** The `topLogprobs` most likely tokens, most likely first. */
  top: Array<{ id: number; logprob: number }>;
}

/**
 * Buffers reused from row to row: the engine thread samples one row at a time, and a new
 * 32k-entry float64 array per row and step is the allocation this avoids.
 */
const scratch = {
  /** The penalized logits of a sampled row (float64, as the penalties compute them). */
  values: new Float64Array(0),
  /** exp((x - max) / temperature) of each entry of `values`. */
  exps: new Float64Array(0),
  /** 1 at the ids `penalized` holds, while a greedy row is scanned. */
  seen: new Uint8Array(0),
};

function ensureScratch(vocab: number): void {
  if (scratch.values.length >= vocab) return;
  scratch.values = new Float64Array(vocab);
  scratch.exps = new Float64Array(vocab);
  scratch.seen = new Uint8Array(vocab);
}

/**
 * The penalized value of every token the penalties touch (the tokens seen), or undefined
 * when no penalty is on. Values as the penalties compute them from the float64 logit:
 * repetition first, then frequency and presence.
 */
function penalties(
  logits: Float32Array,
  params: SamplingParams,
  counts: TokenCounts,
): Map<number, number> | undefined {
  const repetition = params.repetitionPenalty;
  const additive = params.frequencyPenalty !== 0 || params.presencePenalty !== 0;
  if (repetition === 1 && !additive) return undefined;
  const out = new Map<number, number>();
  if (repetition !== 1) {
    const apply = (id: number) => {
      if (out.has(id) || id < 0 || id >= logits.length) return;
      const v = logits[id]!;
      out.set(id, v > 0 ? v / repetition : v * repetition);
    };
    for (const id of counts.prompt) apply(id);
    for (const id of counts.output.keys()) apply(id);
  }
  if (additive) {
    for (const [id, n] of counts.output) {
      if (id < 0 || id >= logits.length) continue;
      out.set(
        id,
        (out.get(id) ?? logits[id]!) - params.frequencyPenalty * n - params.presencePenalty,
      );
    }
  }
  return out;
}

/** The first index of the largest value (NaN never wins; a NaN at 0 does, as it always did). */
function argmax(logits: Float32Array, penalized: Map<number, number> | undefined): number {
  const n = logits.length;
  if (!penalized || penalized.size === 0) {
    let id = 0;
    let best = logits[0]!;
    for (let i = 1; i < n; i++) {
      const v = logits[i]!;
      if (v > best) {
        best = v;
        id = i;
      }
    }
    return id;
  }
  ensureScratch(n);
  const { seen, values } = scratch;
  for (const [id, v] of penalized) {
    seen[id] = 1;
    values[id] = v;
  }
  let id = 0;
  let best = seen[0] ? values[0]! : logits[0]!;
  for (let i = 1; i < n; i++) {
    const v = seen[i] ? values[i]! : logits[i]!;
    if (v > best) {
      best = v;
      id = i;
    }
  }
  for (const i of penalized.keys()) seen[i] = 0;
  return id;
}

/**
 * The `k` largest of value(0 .. n-1), largest first; among equal values the lower index
 * first (a stable order).
 */
function topIndicesBy(n: number, k: number, value: (i: number) => number): number[] {
  const best: number[] = [];
  const bestValues: number[] = [];
  if (k <= 0) return best;
  for (let i = 0; i < n; i++) {
    const v = value(i);
    if (best.length === k && v <= bestValues[k - 1]!) continue;
    let at = best.length === k ? k - 1 : best.length;
    if (best.length < k) {
      best.push(i);
      bestValues.push(v);
    }
    while (at > 0 && bestValues[at - 1]! < v) {
      best[at] = best[at - 1]!;
      bestValues[at] = bestValues[at - 1]!;
      at--;
    }
    best[at] = i;
    bestValues[at] = v;
  }
  return best;
}

/**
 * Samples one token from `logits` (one row, [vocab]). `rng` is the request's own generator;
 * it is advanced once per sampled (non-greedy) token.
 */
export function sample(
  logits: Float32Array,
  params: SamplingParams,
  counts: TokenCounts,
  rng: Rng,
  { logprobs = false, topLogprobs = 0 }: { logprobs?: boolean; topLogprobs?: number } = {},
): Sampled {
  const penalized = penalties(logits, params, counts);
  const id =
    params.temperature === 0 ? argmax(logits, penalized) : draw(logits, penalized, params, rng);
  if (!logprobs) return { id, logprob: 0, top: [] };

  // log-softmax of the raw logits (float64 accumulation), entry by entry as it is needed.
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  return {
    id,
    logprob: logits[id]! - lse,
    // A token masked to -Infinity (a grammar, a ban) has no probability: it is no alternative.
    top: topIndicesBy(logits.length, topLogprobs, (i) => logits[i]! - lse)
      .filter((t) => logits[t]! > -Infinity)
      .map((t) => ({ id: t, logprob: logits[t]! - lse })),
  };
}

/** Candidates tried before sorting the whole vocabulary for top-p / min-p. */
const FIRST_CANDIDATES = 256;

/**
 * A draw from softmax(x / T) restricted by top-k, top-p and min-p, x being the penalized
 * logits. Without any restriction it is one pass over the vocabulary for the total and part
 * of one for the draw; with top-p or min-p it looks at the FIRST_CANDIDATES most likely
 * tokens first and sorts the whole vocabulary only when the nucleus is larger.
 */
function draw(
  logits: Float32Array,
  penalized: Map<number, number> | undefined,
  params: SamplingParams,
  rng: Rng,
): number {
  const { temperature, topK, topP, minP } = params;
  const n = logits.length;
  ensureScratch(n);
  const x = scratch.values;
  const exps = scratch.exps;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[i]!;
    x[i] = v;
    if (v > max) max = v;
  }
  if (penalized) {
    for (const [id, v] of penalized) x[id] = v;
    // The maximum of the penalized row: a penalty may have lowered the largest logit.
    max = -Infinity;
    for (let i = 0; i < n; i++) if (x[i]! > max) max = x[i]!;
  }
  let total = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp((x[i]! - max) / temperature);
    exps[i] = e;
    total += e;
  }

  if (topK === 0 && topP >= 1 && minP <= 0) {
    let u = rng.next() * total;
    for (let i = 0; i < n; i++) {
      u -= exps[i]!;
      if (u < 0) return i;
    }
    return n - 1;
  }

  const limited = topK > 0 && topK < n;
  let order = topIndicesBy(n, limited ? topK : Math.min(FIRST_CANDIDATES, n), (i) => x[i]!);
  let p = order.map((i) => exps[i]!);
  // top-k renormalizes over its k tokens; otherwise probabilities are over the vocabulary.
  if (limited) total = p.reduce((a, b) => a + b, 0);
  const covered = p.reduce((a, b) => a + b, 0) / total;
  const minFloor = minP * (p[0]! / total);
  const enough =
    limited ||
    order.length === n ||
    ((topP >= 1 || covered >= topP) && (minP <= 0 || p.at(-1)! / total < minFloor));
  if (!enough) {
    order = Array.from({ length: n }, (_, i) => i).sort((a, b) => x[b]! - x[a]!);
    p = order.map((i) => exps[i]!);
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
