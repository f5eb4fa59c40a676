// Constrained generation end to end: the tiny checkpoint's tokenizer (461 pieces, padded to a
// model vocabulary of 512 here) and a 32,003-token Mistral-like one, a seeded random model
// (random logits, the grammar's mask, a draw), and answers that must parse and validate. At
// every step a stop token must be allowed exactly when the text so far is a complete valid
// answer. Timings for docs/structured-output.md are printed at the end.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  applyMask,
  ConstraintViolation,
  GrammarCompilerCache,
  grammarKey,
  tokenizerVocabulary,
  type ResponseFormatSpec,
  type TokenizerJsonLike,
} from './constraint.js';
import { generate, pieceBytes, tinyTokenizer, validate } from './grammar.test-helper.js';
import { mistralLikeTokenizer } from './mistral-vocab.test-helper.js';
import { seededUniform } from '../../model/tiny/tiny-model.js';

type Schema = Record<string, unknown>;
const popcount = (w: number) => {
  let n = 0;
  for (let x = w >>> 0; x !== 0; x &= x - 1) n++;
  return n;
};
const obj = (properties: Record<string, unknown>, required = Object.keys(properties)): Schema => ({
  type: 'object',
  properties,
  required,
  additionalProperties: false,
});

// What the openai SDK's zodResponseFormat makes of a zod object (copied from its output).
const ZOD_PERSON: Schema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  type: 'object',
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 20 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    tags: { minItems: 1, maxItems: 3, type: 'array', items: { type: 'string' } },
    kind: { type: 'string', enum: ['a', 'b'] },
    zip: { type: 'string', pattern: '^\\d{5}$' },
    email: {
      type: 'string',
      format: 'email',
      pattern:
        "^(?:[A-Za-z0-9_'+\\-]+\\.)*[A-Za-z0-9_'+\\-]*[A-Za-z0-9_+-]@(?:[A-Za-z0-9][A-Za-z0-9\\-]*\\.)+[A-Za-z]{2,}$",
    },
    when: {
      type: 'string',
      format: 'date-time',
      pattern:
        '^(?:(?:\\d\\d[2468][048]|\\d\\d[13579][26]|\\d\\d0[48]|[02468][048]00|[13579][26]00)-02-29|\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|(?:02)-(?:0[1-9]|1\\d|2[0-8])))T(?:(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d+)?(?:Z))$',
    },
    opt: { type: ['string', 'null'] },
    lit: { type: 'string', const: 'x' },
    n: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 10 },
    safe: { type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991 },
  },
  required: ['name', 'age', 'tags', 'kind', 'zip', 'email', 'when', 'opt', 'lit', 'n', 'safe'],
  additionalProperties: false,
};

/** The schemas generated against, each with whether its checks are exact (no xgrammar format). */
const SCHEMAS: Record<string, { schema: Schema; exact?: boolean }> = {
  'nested objects': {
    schema: obj({
      name: { type: 'string', maxLength: 12 },
      address: obj({
        street: { type: 'string', maxLength: 16 },
        geo: obj({ lat: { type: 'number', minimum: -90, maximum: 90 }, ok: { type: 'boolean' } }),
      }),
      note: { type: ['string', 'null'], maxLength: 6 },
    }),
  },
  'arrays with bounds': {
    schema: obj({
      tags: { type: 'array', items: { type: 'string', maxLength: 6 }, minItems: 1, maxItems: 3 },
      pair: {
        type: 'array',
        items: { type: 'integer', minimum: 0, maximum: 9 },
        minItems: 2,
        maxItems: 2,
      },
      none: { type: 'array', items: { type: 'boolean' }, maxItems: 0 },
    }),
  },
  enums: {
    schema: obj({
      kind: { type: 'string', enum: ['receipt', 'invoice', 'other "quoted"'] },
      mixed: { enum: [1, 'two', null, true, { k: [1] }] },
      currency: { const: '€' },
    }),
  },
  'integer ranges': {
    schema: obj({
      age: { type: 'integer', minimum: 0, maximum: 120 },
      year: { type: 'integer', minimum: 1900, maximum: 2100 },
      celsius: { type: 'integer', minimum: -40, maximum: 50 },
      open: { type: 'integer', exclusiveMinimum: 0, exclusiveMaximum: 10 },
      negative: { type: 'integer', minimum: -120, maximum: -3 },
      floor: { type: 'integer', minimum: 1000 },
    }),
  },
  'number ranges': {
    schema: obj({
      price: { type: 'number', minimum: 0, maximum: 1000 },
      ratio: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1 },
      tiny: { type: 'number', minimum: -0.05, maximum: 0.125 },
      any: { type: 'number' },
    }),
  },
  $ref: {
    schema: {
      $defs: {
        address: obj({ city: { type: 'string', maxLength: 8 }, zip: { $ref: '#/$defs/zip' } }),
        zip: { type: 'string', pattern: '^\\d{5}$' },
        node: obj({
          v: { type: 'integer', minimum: 0, maximum: 99 },
          kids: { type: 'array', items: { $ref: '#/$defs/node' }, maxItems: 2 },
        }),
      },
      ...obj({
        home: { $ref: '#/$defs/address' },
        work: { anyOf: [{ $ref: '#/$defs/address' }, { type: 'null' }] },
        tree: { $ref: '#/$defs/node' },
      }),
    },
  },
  'strings and patterns': {
    schema: obj({
      code: { type: 'string', pattern: '^[A-Z]{2}-\\d{3,4}$' },
      short: { type: 'string', minLength: 2, maxLength: 4 },
      anywhere: { type: 'string', pattern: '[,;]' },
      choice: { type: 'string', pattern: '^(yes|no|maybe)$' },
    }),
  },
  formats: {
    exact: false,
    schema: obj({
      day: { type: 'string', format: 'date' },
      id: { type: 'string', format: 'uuid' },
      ip: { type: 'string', format: 'ipv4' },
      at: { type: 'string', format: 'date-time' },
      mail: { type: 'string', format: 'email' },
    }),
  },
  'anyOf and a root array': {
    schema: {
      type: 'array',
      minItems: 1,
      maxItems: 2,
      items: {
        anyOf: [
          obj({ a: { type: 'integer', minimum: 1, maximum: 3 } }),
          obj({ b: { type: 'string', maxLength: 3 } }),
        ],
      },
    },
  },
  'zod (openai SDK helper)': { schema: ZOD_PERSON },
};

interface Setup {
  name: string;
  tokenizer: TokenizerJsonLike;
  vocabSize: number;
  stop: number[];
  seeds: number[];
  budget: number;
}

const SETUPS: Setup[] = [
  {
    name: 'tiny tokenizer (461 pieces, vocab 512)',
    tokenizer: tinyTokenizer(),
    vocabSize: 512,
    stop: [2, 460],
    seeds: [1, 2, 3, 4],
    budget: 700,
  },
  {
    name: 'Mistral-like tokenizer (32,003)',
    tokenizer: mistralLikeTokenizer() as unknown as TokenizerJsonLike,
    vocabSize: 32_003,
    stop: [2, 32_002],
    seeds: [1, 2],
    budget: 500,
  },
];

const timings: Record<string, number[]> = {};

describe.each(SETUPS)('$name', (setup) => {
  let cache: GrammarCompilerCache;
  const bytes = pieceBytes(setup.tokenizer);
  const encoded = tokenizerVocabulary(setup.tokenizer).encoded;
  const id = (piece: string) => encoded.indexOf(piece);
  const allowed = (bits: Int32Array, token: number) =>
    ((bits[token >>> 5]! >>> (token & 31)) & 1) === 1;

  beforeAll(async () => {
    const started = performance.now();
    cache = await GrammarCompilerCache.create(setup.tokenizer, {
      vocabSize: setup.vocabSize,
      stopTokenIds: setup.stop,
    });
    (timings[`tokenizer setup ms (${setup.vocabSize})`] ??= []).push(performance.now() - started);
  });
  afterAll(() => cache.dispose());

  it('reads the vocabulary as byte fallback with a prefix space', () => {
    expect(cache.vocabulary).toMatchObject({ vocabType: 'byte_fallback', addPrefixSpace: true });
    expect(encoded[id('<0x0A>')]).toBe('<0x0A>');
    // Special tokens are blanked (never allowed); stop tokens are named apart.
    for (const t of setup.tokenizer.added_tokens ?? []) expect(encoded[t.id]).toBe('');
  });

  for (const [name, { schema, exact = true }] of Object.entries(SCHEMAS)) {
    it(`generates valid JSON: ${name}`, async () => {
      const format: ResponseFormatSpec = { kind: 'json_schema', schema: JSON.stringify(schema) };
      for (const seed of setup.seeds) {
        const constraint = await cache.constraint(format);
        const result = await generate(constraint, {
          vocabSize: setup.vocabSize,
          bytes,
          stopTokenIds: setup.stop,
          seed,
          budget: setup.budget,
        });
        constraint.dispose();
        expect(
          result.done,
          `seed ${seed}: not done in ${setup.budget} tokens: ${result.text}`,
        ).toBe(true);
        const value = JSON.parse(result.text) as unknown;
        expect(validate(value, schema), result.text).toEqual([]);
        // A stop token is allowed exactly when the text so far is a complete, valid answer.
        for (const step of result.steps) {
          let complete: boolean;
          try {
            complete = validate(JSON.parse(step.text), schema).length === 0;
          } catch {
            complete = false;
          }
          if (step.stopAllowed) expect(complete, step.text).toBe(true);
          else if (exact) expect(complete, step.text).toBe(false);
        }
        (timings[`mask µs/token (${setup.vocabSize})`] ??= []).push(
          ...result.maskMs.map((ms) => ms * 1000),
        );
      }
    });
  }

  it('generates a JSON object for json_object', async () => {
    for (const seed of setup.seeds) {
      const constraint = await cache.constraint({ kind: 'json_object' });
      const result = await generate(constraint, {
        vocabSize: setup.vocabSize,
        bytes,
        stopTokenIds: setup.stop,
        seed,
        budget: setup.budget,
      });
      constraint.dispose();
      expect(result.done, result.text).toBe(true);
      const value = JSON.parse(result.text) as unknown;
      expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
      for (const step of result.steps) {
        if (!step.stopAllowed) continue;
        const parsed = JSON.parse(step.text) as unknown;
        expect(typeof parsed).toBe('object');
      }
    }
  });

  it('masks: the first token opens the object; padding and special ids never pass', async () => {
    const constraint = await cache.constraint({ kind: 'json_object' });
    const bits = new Int32Array(constraint.words);
    await constraint.mask(bits);
    expect(allowed(bits, id('<0x7B>'))).toBe(true); // `{` as a byte
    if (id('{') >= 0) expect(allowed(bits, id('{'))).toBe(true);
    if (id('{"') >= 0) expect(allowed(bits, id('{"'))).toBe(true);
    expect(allowed(bits, id('▁'))).toBe(false); // no whitespace before the value
    if (id('▁{') >= 0) expect(allowed(bits, id('▁{'))).toBe(false);
    for (const stop of setup.stop) expect(allowed(bits, stop)).toBe(false);
    for (const t of setup.tokenizer.added_tokens ?? []) expect(allowed(bits, t.id)).toBe(false);
    for (let t = encoded.length; t < setup.vocabSize; t++) expect(allowed(bits, t)).toBe(false);
    constraint.dispose();
  });

  it('masks: `"` with and without a leading space, digits, byte-fallback bytes', async () => {
    const schema = obj({ a: { type: 'string' }, n: { type: 'integer' } });
    const constraint = await cache.constraint({
      kind: 'json_schema',
      schema: JSON.stringify(schema),
    });
    const bits = new Int32Array(constraint.words);
    const feed = async (...pieces: string[]) => {
      for (const p of pieces) {
        await constraint.mask(bits);
        expect(allowed(bits, id(p)), `"${p}" after ${pieces.join('')}`).toBe(true);
        constraint.accept(id(p));
      }
      await constraint.mask(bits);
    };
    await feed('<0x7B>'); // {
    expect(allowed(bits, id('<0x22>'))).toBe(true); // `"` right after `{`
    expect(allowed(bits, id('▁'))).toBe(false);
    await feed('<0x22>', 'a', '<0x22>', '<0x3A>'); // "a":
    // ": " then `"`: the space comes first, alone or inside a `▁"` piece.
    expect(allowed(bits, id('▁'))).toBe(true);
    expect(allowed(bits, id('<0x22>'))).toBe(false);
    if (id('▁"') >= 0) expect(allowed(bits, id('▁"'))).toBe(true);
    await feed('▁', '<0x22>');
    // Inside a string: letters, `▁` (a space), multi-byte UTF-8 through byte fallback; a raw
    // newline byte is not JSON and is refused, its escape is allowed.
    expect(allowed(bits, id('▁'))).toBe(true);
    expect(allowed(bits, id('<0x0A>'))).toBe(false);
    expect(allowed(bits, id('<0xC3>'))).toBe(true);
    await feed('<0xC3>');
    expect(allowed(bits, id('<0xA9>'))).toBe(true); // é
    expect(allowed(bits, id('<0x41>'))).toBe(false); // not a continuation byte
    await feed('<0xA9>', '<0x5C>');
    expect(allowed(bits, id('n'))).toBe(true); // `\n`
    await feed('n', '<0x22>', '<0x2C>', '▁', '<0x22>', 'n', '<0x22>', '<0x3A>', '▁');
    for (const d of ['0', '1', '5', '9']) expect(allowed(bits, id(d)), d).toBe(true);
    if (id('▁1') >= 0) {
      // after `": ` the space is written: `▁1` would write a second one.
      expect(allowed(bits, id('▁1'))).toBe(false);
    }
    await feed('1', '2', '<0x7D>');
    expect(constraint.isDone).toBe(true);
    for (const stop of setup.stop) expect(allowed(bits, stop)).toBe(true);
    expect(() => constraint.accept(id('1'))).toThrow(ConstraintViolation);
    constraint.accept(setup.stop[0]!);
    expect(constraint.isDone).toBe(true);
    // Terminated: the mask is the stop tokens (xgrammar is not asked), nothing is accepted.
    await constraint.mask(bits);
    expect(bits.reduce((n, w) => n + popcount(w), 0)).toBe(setup.stop.length);
    expect(() => constraint.accept(id('1'))).toThrow(ConstraintViolation);
    constraint.dispose();
  });

  it('masks: no UTF-8 that a strict decoder refuses (overlong, surrogates, past U+10FFFF)', async () => {
    const constraint = await cache.constraint({
      kind: 'json_schema',
      schema: JSON.stringify({ type: 'string' }),
    });
    const bits = new Int32Array(constraint.words);
    const byte = (b: number) => id(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    await constraint.mask(bits);
    constraint.accept(byte(0x22)); // "
    await constraint.mask(bits);
    for (const never of [0xc0, 0xc1, 0xf5, 0xff]) expect(allowed(bits, byte(never))).toBe(false);
    const after: Array<[number, number[], number[]]> = [
      [0xe0, [0xa0, 0xbf], [0x80, 0x9f]],
      [0xed, [0x80, 0x9f], [0xa0, 0xbf]],
      [0xf0, [0x90, 0xbf], [0x80, 0x8f]],
      [0xf4, [0x80, 0x8f], [0x90, 0xbf]],
    ];
    for (const [lead, ok, bad] of after) {
      expect(allowed(bits, byte(lead))).toBe(true);
      constraint.accept(byte(lead));
      await constraint.mask(bits);
      for (const b of ok) expect(allowed(bits, byte(b)), `${lead} ${b}`).toBe(true);
      for (const b of bad) expect(allowed(bits, byte(b)), `${lead} ${b}`).toBe(false);
      // finish the character: lead, then continuation bytes
      constraint.accept(byte(ok[0]!));
      if (lead >= 0xf0) {
        await constraint.mask(bits);
        constraint.accept(byte(0x80));
      }
      await constraint.mask(bits);
      constraint.accept(byte(0x80));
      await constraint.mask(bits);
    }
    constraint.dispose();
  });

  it('compiles once per schema and keeps at most maxGrammars', async () => {
    const small = await GrammarCompilerCache.create(setup.tokenizer, {
      vocabSize: setup.vocabSize,
      stopTokenIds: setup.stop,
      maxGrammars: 2,
    });
    const format = (n: number): ResponseFormatSpec => ({
      kind: 'json_schema',
      schema: JSON.stringify(obj({ [`p${n}`]: { type: 'integer' } })),
    });
    expect((await small.compile(format(1))).cached).toBe(false);
    expect((await small.compile(format(1))).cached).toBe(true);
    const [a, b] = await Promise.all([small.compile(format(2)), small.compile(format(2))]);
    expect([a.cached, b.cached].sort()).toEqual([false, true]);
    const keep = await small.constraint(format(1));
    await small.compile(format(3)); // drops format 2 (least recently used)
    expect(small.size).toBe(2);
    expect((await small.compile(format(1))).cached).toBe(true);
    expect((await small.compile(format(2))).cached).toBe(false);
    expect(small.misses).toBe(4);
    // A constraint outlives its grammar's eviction (and the cache).
    await small.compile(format(4));
    await small.compile(format(5));
    small.dispose();
    const bits = new Int32Array(keep.words);
    await keep.mask(bits);
    expect(allowed(bits, id('<0x7B>'))).toBe(true);
    keep.dispose();
    expect(grammarKey(format(1))).toMatch(/^[0-9a-f]{64}$/);
    expect(grammarKey({ kind: 'json_object' })).not.toBe(grammarKey(format(1)));
  });

  it('refuses a schema outside the subset before xgrammar sees it', async () => {
    await expect(
      cache.compile({
        kind: 'json_schema',
        schema: JSON.stringify({ type: 'string', format: 'ipv5' }),
      }),
    ).rejects.toThrow(/schema\.format/);
  });
});

describe('applyMask', () => {
  it('matches the bit-by-bit definition, with offsets and a partial last word', () => {
    const uniform = seededUniform(5);
    for (const vocab of [1, 31, 32, 33, 100, 461, 1000]) {
      const words = Math.ceil(vocab / 32);
      const bits = new Int32Array(words);
      for (let w = 0; w < words; w++) {
        const kind = uniform();
        bits[w] = kind < 0.3 ? 0 : kind < 0.6 ? -1 : (uniform() * 2 ** 32) | 0;
      }
      const offset = 7;
      const logits = Float32Array.from({ length: vocab + 20 }, () => uniform());
      const expected = Float32Array.from(logits);
      for (let i = 0; i < vocab; i++) {
        if (((bits[i >>> 5]! >>> (i & 31)) & 1) === 0) expected[offset + i] = -Infinity;
      }
      applyMask(logits, offset, vocab, bits);
      expect(logits).toEqual(expected);
      const unsigned = Uint32Array.from(bits);
      const again = Float32Array.from(expected);
      applyMask(again, offset, vocab, unsigned);
      expect(again).toEqual(expected);
    }
  });
});

describe('timings (32,003 tokens)', () => {
  it('prints mask time per token and compile time cold and cached for 20 properties', async () => {
    const tokenizer = mistralLikeTokenizer() as unknown as TokenizerJsonLike;
    const setupStarted = performance.now();
    const cache = await GrammarCompilerCache.create(tokenizer, {
      vocabSize: 32_003,
      stopTokenIds: [2, 32_002],
    });
    const setupMs = performance.now() - setupStarted;
    const bytes = pieceBytes(tokenizer);
    // Four of each: free strings, integer ranges, booleans, enums, numbers with a bound; one
    // string is a date.
    const kinds = [
      { type: 'string' },
      { type: 'integer', minimum: 0, maximum: 1000 },
      { type: 'boolean' },
      { type: 'string', enum: ['red', 'green', 'blue'] },
      { type: 'number', minimum: 0 },
    ];
    const twenty = (prefix: string): ResponseFormatSpec => {
      const properties: Record<string, unknown> = Object.fromEntries(
        Array.from({ length: 20 }, (_, i) => [`${prefix}_${i}`, kinds[i % kinds.length]]),
      );
      properties[`${prefix}_15`] = { type: 'string', format: 'date' };
      return { kind: 'json_schema', schema: JSON.stringify(obj(properties)) };
    };
    const timed = async (format: ResponseFormatSpec) => {
      const started = performance.now();
      const result = await cache.compile(format);
      return { ms: performance.now() - started, ...result };
    };
    // The first compile of a process also pays for WebAssembly warming up.
    const firstInProcess = await timed(twenty('first'));
    const warmUp = await cache.constraint({ kind: 'json_object' });
    await generate(warmUp, {
      vocabSize: 32_003,
      bytes,
      stopTokenIds: [2, 32_002],
      seed: 5,
      budget: 200,
    });
    warmUp.dispose();

    const format = twenty('field');
    const cold = await timed(format);
    const cached = await timed(format);
    expect([firstInProcess.cached, cold.cached, cached.cached]).toEqual([false, false, true]);

    const constraint = await cache.constraint(format);
    const result = await generate(constraint, {
      vocabSize: 32_003,
      bytes,
      stopTokenIds: [2, 32_002],
      seed: 11,
      budget: 1500,
      trackText: false,
    });
    expect(result.done).toBe(true);
    constraint.dispose();
    // applyMask over the masks of that answer, timed apart.
    const bits = new Int32Array(constraint.words);
    const replay = await cache.constraint(format);
    const logits = new Float32Array(32_003);
    let applyMs = 0;
    for (const token of result.ids) {
      await replay.mask(bits);
      const started = performance.now();
      applyMask(logits, 0, 32_003, bits);
      applyMs += performance.now() - started;
      replay.accept(token);
    }
    replay.dispose();

    // What a length bound costs: one rule per character position.
    const bounded = await timed({
      kind: 'json_schema',
      schema: JSON.stringify(obj({ s: { type: 'string', maxLength: 40 } })),
    });
    cache.dispose();

    const masks = result.maskMs.map((ms) => ms * 1000).sort((x, y) => x - y);
    const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
    const p = (q: number) => masks[Math.min(masks.length - 1, Math.floor(q * masks.length))]!;
    const all = timings['mask µs/token (32003)'] ?? [];
    console.log(
      [
        `grammar timings, 32,003-token vocabulary (${result.ids.length} tokens of a 20-property answer):`,
        `  tokenizer setup (TokenizerInfo + compiler): ${setupMs.toFixed(0)} ms`,
        `  mask per token: mean ${mean(masks).toFixed(1)} µs, p50 ${p(0.5).toFixed(1)} µs, p99 ${p(0.99).toFixed(1)} µs`,
        `  applyMask per token: mean ${((applyMs / result.ids.length) * 1000).toFixed(1)} µs`,
        `  mask per token over the schemas of this file: mean ${all.length ? mean(all).toFixed(1) : '-'} µs (${all.length} tokens)`,
        `  compile, 20 properties: first of the process ${firstInProcess.ms.toFixed(1)} ms; cold ${cold.ms.toFixed(1)} ms (xgrammar ${cold.compileMs.toFixed(1)} ms); cached ${cached.ms.toFixed(3)} ms`,
        `  compile, one string with maxLength 40: ${bounded.ms.toFixed(0)} ms`,
      ].join('\n'),
    );
  });
});
