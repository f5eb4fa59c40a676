// What the grammar tests share: decoding token ids to text (SentencePiece byte fallback), a
// validator for the schema subset (independent of the grammar code: it reads the schema, not
// the grammar), and constrained generation with a seeded random "model".
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { seededUniform, tinyTokenizerDir } from '../../model/tiny/tiny-model.js';
import { applyMask, type Constraint, type TokenizerJsonLike } from './constraint.js';

export function tinyTokenizer(): TokenizerJsonLike {
  return JSON.parse(
    readFileSync(join(tinyTokenizerDir(), 'tokenizer.json'), 'utf8'),
  ) as TokenizerJsonLike;
}

/** Each id's bytes as the tokenizer's decoder writes them (`<0x0A>` a byte, `▁` a space). */
export function pieceBytes(tokenizer: TokenizerJsonLike): Uint8Array[] {
  const vocab = tokenizer.model.vocab as Record<string, number>;
  const out: Uint8Array[] = [];
  const encoder = new TextEncoder();
  for (const [piece, id] of Object.entries(vocab)) {
    const byte = /^<0x([0-9A-F]{2})>$/.exec(piece);
    out[id] = byte
      ? Uint8Array.of(parseInt(byte[1]!, 16))
      : encoder.encode(piece.replaceAll('▁', ' '));
  }
  for (const t of tokenizer.added_tokens ?? []) out[t.id] ??= new Uint8Array(0);
  return out;
}

/**
 * The text of `ids`. `fatal`: throw on invalid UTF-8 (a complete answer must have none); else
 * an unfinished character at the end (a prefix) becomes U+FFFD.
 */
export function decodeIds(
  ids: readonly number[],
  bytes: readonly Uint8Array[],
  fatal = true,
): string {
  const all = ids.map((id) => bytes[id] ?? new Uint8Array(0));
  const joined = new Uint8Array(all.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of all) {
    joined.set(b, at);
    at += b.length;
  }
  return new TextDecoder('utf-8', { fatal }).decode(joined);
}

type Schema = boolean | Record<string, unknown>;

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b as object);
  return (
    ka.length === kb.length &&
    ka.every((k) => deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  );
}

function typeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

const FORMATS: Record<string, RegExp> = {
  date: /^\d{4}-\d{2}-\d{2}$/,
  'date-time': /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i,
  time: /^\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i,
  uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i,
  ipv4: /^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/,
  email: /^[^@\s]+@[^@\s]+$/,
};

/**
 * Errors of `value` against `schema` (the subset of schema-subset.ts; objects without
 * `additionalProperties` are closed, as there), [] when valid.
 */
export function validate(
  value: unknown,
  schema: Schema,
  root: Schema = schema,
  path = '$',
): string[] {
  if (schema === true) return [];
  if (schema === false) return [`${path}: false schema`];
  const errors: string[] = [];
  const fail = (m: string) => errors.push(`${path}: ${m}`);
  if (typeof schema.$ref === 'string') {
    let target: unknown = root;
    for (const seg of schema.$ref.slice(2).split('/').filter(Boolean)) {
      target = (target as Record<string, unknown>)[seg];
    }
    return validate(value, target as Schema, root, path);
  }
  if ('const' in schema && !deepEqual(value, schema.const)) fail('const');
  if (Array.isArray(schema.enum) && !schema.enum.some((e) => deepEqual(e, value))) fail('enum');
  if (Array.isArray(schema.anyOf)) {
    if (!schema.anyOf.some((s) => validate(value, s as Schema, root, path).length === 0)) {
      fail('anyOf');
    }
  }
  if (schema.type !== undefined) {
    const types = (Array.isArray(schema.type) ? schema.type : [schema.type]) as string[];
    const t = typeOf(value);
    const ok = types.some(
      (x) =>
        x === t ||
        (x === 'integer' && typeof value === 'number' && Number.isInteger(value)) ||
        (x === 'number' && t === 'number'),
    );
    if (!ok) fail(`type ${t} not in ${types.join(',')}`);
  }
  if (typeof value === 'number') {
    const n = value;
    if (typeof schema.minimum === 'number' && n < schema.minimum) fail('minimum');
    if (typeof schema.maximum === 'number' && n > schema.maximum) fail('maximum');
    if (typeof schema.exclusiveMinimum === 'number' && n <= schema.exclusiveMinimum) {
      fail('exclusiveMinimum');
    }
    if (typeof schema.exclusiveMaximum === 'number' && n >= schema.exclusiveMaximum) {
      fail('exclusiveMaximum');
    }
  }
  if (typeof value === 'string') {
    const length = [...value].length;
    if (typeof schema.minLength === 'number' && length < schema.minLength) fail('minLength');
    if (typeof schema.maxLength === 'number' && length > schema.maxLength) fail('maxLength');
    if (typeof schema.pattern === 'string' && !new RegExp(schema.pattern, 'u').test(value)) {
      fail(`pattern ${schema.pattern}`);
    }
    const format = typeof schema.format === 'string' ? FORMATS[schema.format] : undefined;
    if (format && typeof schema.pattern !== 'string' && !format.test(value)) {
      fail(`format ${String(schema.format)}`);
    }
  }
  if (Array.isArray(value)) {
    if (typeof schema.minItems === 'number' && value.length < schema.minItems) fail('minItems');
    if (typeof schema.maxItems === 'number' && value.length > schema.maxItems) fail('maxItems');
    if (schema.items !== undefined) {
      value.forEach((v, i) =>
        errors.push(...validate(v, schema.items as Schema, root, `${path}[${i}]`)),
      );
    }
  }
  if (typeOf(value) === 'object' && (schema.type === 'object' || schema.properties)) {
    const obj = value as Record<string, unknown>;
    const properties = (schema.properties ?? {}) as Record<string, Schema>;
    for (const name of (schema.required ?? []) as string[]) {
      if (!(name in obj)) fail(`missing ${name}`);
    }
    for (const [k, v] of Object.entries(obj)) {
      if (k in properties) errors.push(...validate(v, properties[k]!, root, `${path}.${k}`));
      else if (schema.additionalProperties !== true) fail(`extra property ${k}`);
    }
  }
  return errors;
}

export interface Generation {
  ids: number[];
  text: string;
  /** Whether the constraint finished (only a stop token allowed) within the budget. */
  done: boolean;
  /** Per step: whether a stop token was allowed, and the text so far. */
  steps: Array<{ stopAllowed: boolean; text: string }>;
  maskMs: number[];
}

export interface RandomModel {
  vocabSize: number;
  bytes: readonly Uint8Array[];
  stopTokenIds: readonly number[];
  seed: number;
  /** Most tokens. */
  budget: number;
  /**
   * Logit bonus for tokens holding ASCII punctuation (a random model that likes to close
   * strings and containers and to move on through patterns, so that answers end within the
   * budget); default ln(vocabSize); 0: uniform random logits.
   */
  closeBias?: number;
  /** Record the text before each step (for checks; off for timings: it allocates). */
  trackText?: boolean;
}

/**
 * Constrained generation with a seeded random model: each step random logits (uniform in
 * [0, 4) plus closeBias), the grammar's mask, then a draw from the softmax of what is left.
 */
export async function generate(constraint: Constraint, model: RandomModel): Promise<Generation> {
  const { vocabSize, bytes, budget, closeBias = Math.log(vocabSize) } = model;
  const uniform = seededUniform(model.seed);
  const punctuation = (x: number) =>
    (x >= 0x21 && x <= 0x2f) ||
    (x >= 0x3a && x <= 0x40) ||
    (x >= 0x5b && x <= 0x60) ||
    (x >= 0x7b && x <= 0x7e);
  const closing = new Float32Array(vocabSize);
  for (let i = 0; i < vocabSize; i++) {
    const b = bytes[i];
    if (b && b.some(punctuation)) closing[i] = closeBias;
  }
  const bits = new Int32Array(constraint.words);
  const logits = new Float32Array(vocabSize);
  const ids: number[] = [];
  const steps: Generation['steps'] = [];
  const maskMs: number[] = [];
  let text = '';
  for (let step = 0; step < budget; step++) {
    const started = performance.now();
    await constraint.mask(bits);
    maskMs.push(performance.now() - started);
    const stopAllowed = model.stopTokenIds.some(
      (id) => ((bits[id >>> 5]! >>> (id & 31)) & 1) === 1,
    );
    steps.push({ stopAllowed, text });
    if (constraint.isDone) return { ids, text: decodeIds(ids, bytes), done: true, steps, maskMs };
    for (let i = 0; i < vocabSize; i++) logits[i] = 4 * uniform() + closing[i]!;
    applyMask(logits, 0, vocabSize, bits);
    let max = -Infinity;
    for (let i = 0; i < vocabSize; i++) if (logits[i]! > max) max = logits[i]!;
    let total = 0;
    for (let i = 0; i < vocabSize; i++) total += Math.exp(logits[i]! - max);
    let r = uniform() * total;
    let id = -1;
    for (let i = 0; i < vocabSize; i++) {
      const p = Math.exp(logits[i]! - max);
      if (p === 0) continue;
      id = i;
      r -= p;
      if (r <= 0) break;
    }
    constraint.accept(id);
    ids.push(id);
    if (model.stopTokenIds.includes(id)) {
      return { ids, text: decodeIds(ids.slice(0, -1), bytes), done: true, steps, maskMs };
    }
    if (model.trackText !== false) text = decodeIds(ids, bytes, false);
  }
  return { ids, text, done: false, steps, maskMs };
}
