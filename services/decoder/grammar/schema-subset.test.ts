import { describe, expect, it } from 'vitest';
import {
  checkSchema,
  parseSchemaText,
  SCHEMA_LIMITS,
  SchemaError,
  SUPPORTED_FORMATS,
} from './schema-subset.js';

const obj = (properties: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
  type: 'object',
  properties,
  required: Object.keys(properties),
  additionalProperties: false,
  ...extra,
});

/** The SchemaError checkSchema throws, or undefined. */
function refusal(schema: unknown): SchemaError | undefined {
  try {
    checkSchema(schema);
    return undefined;
  } catch (error) {
    if (error instanceof SchemaError) return error;
    throw error;
  }
}

describe('checkSchema accepts the subset', () => {
  const ACCEPTED: Record<string, unknown> = {
    'every type': obj({
      o: obj({}),
      a: { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 3 },
      s: { type: 'string', minLength: 1, maxLength: 20 },
      n: { type: 'number', minimum: 0, exclusiveMaximum: 1.5 },
      i: { type: 'integer', exclusiveMinimum: -3, maximum: 120 },
      b: { type: 'boolean' },
      z: { type: 'null' },
    }),
    'enum, const, anyOf, type lists': obj({
      e: { enum: ['a', 1, null, { k: [true] }] },
      t: { type: 'string', enum: ['x', 'y'] },
      c: { const: 'fixed' },
      u: { anyOf: [{ type: 'string' }, { type: 'integer', minimum: 0 }] },
      l: { type: ['string', 'null'], maxLength: 3 },
    }),
    'patterns and formats': obj({
      p: { type: 'string', pattern: '^[A-Z]{2}-\\d+$' },
      ...Object.fromEntries(SUPPORTED_FORMATS.map((f) => [f, { type: 'string', format: f }])),
      both: { type: 'string', format: 'email', pattern: '^[^@]+@[^@]+$' },
    }),
    '$ref, $defs, definitions, recursion': {
      $defs: {
        node: obj({
          v: { type: 'integer' },
          kids: { type: 'array', items: { $ref: '#/$defs/node' } },
        }),
      },
      definitions: { name: { type: 'string' } },
      ...obj({
        root: { $ref: '#/$defs/node' },
        name: { $ref: '#/definitions/name' },
        same: { $ref: '#/properties/name' },
        self: { anyOf: [{ $ref: '#' }, { type: 'null' }] },
      }),
    },
    'annotations anywhere': {
      $schema: 'http://json-schema.org/draft-07/schema#',
      $id: 'https://example.com/receipt',
      title: 'Receipt',
      ...obj({
        total: { type: 'number', description: 'in euros', examples: [1], default: 0 },
      }),
      $comment: 'ok',
    },
    'optional properties, no additionalProperties': {
      type: 'object',
      properties: { a: { type: 'string' }, b: { type: 'string' } },
      required: ['a'],
    },
    'true as a schema': obj({ anything: true }),
  };
  for (const [name, schema] of Object.entries(ACCEPTED)) {
    it(name, () => {
      expect(refusal(schema)).toBeUndefined();
    });
  }
});

describe('checkSchema refuses the rest, naming the keyword and its path', () => {
  const REFUSED: Array<[string, unknown, string, RegExp?]> = [
    ['format', obj({ date: { type: 'string', format: 'ipv5' } }), 'schema.properties.date.format'],
    ['oneOf', obj({ x: { oneOf: [{ type: 'string' }] } }), 'schema.properties.x.oneOf', /anyOf/],
    ['allOf', { allOf: [{ type: 'string' }] }, 'schema.allOf'],
    ['not', obj({ x: { not: { type: 'string' } } }), 'schema.properties.x.not'],
    [
      'multipleOf',
      obj({ x: { type: 'integer', multipleOf: 5 } }),
      'schema.properties.x.multipleOf',
    ],
    [
      'uniqueItems',
      obj({ x: { type: 'array', uniqueItems: true } }),
      'schema.properties.x.uniqueItems',
    ],
    ['patternProperties', { type: 'object', patternProperties: {} }, 'schema.patternProperties'],
    [
      'additionalProperties: true',
      { type: 'object', additionalProperties: true },
      'schema.additionalProperties',
    ],
    [
      'additionalProperties: schema',
      obj({ m: { type: 'object', additionalProperties: { type: 'string' } } }),
      'schema.properties.m.additionalProperties',
    ],
    ['minProperties', { type: 'object', minProperties: 1 }, 'schema.minProperties'],
    ['prefixItems', { type: 'array', prefixItems: [] }, 'schema.prefixItems'],
    ['tuple items', { type: 'array', items: [{ type: 'string' }] }, 'schema.items'],
    ['nullable', obj({ x: { type: 'string', nullable: true } }), 'schema.properties.x.nullable'],
    [
      'unknown keyword',
      obj({ 'a b': { type: 'string', 'x-foo': 1 } }),
      'schema.properties["a b"]["x-foo"]',
    ],
    ['$id below the root', obj({ x: { $id: 'x', type: 'string' } }), 'schema.properties.x.$id'],
    [
      'keyword without its type',
      obj({ x: { maxLength: 3 } }),
      'schema.properties.x.maxLength',
      /type/,
    ],
    [
      'enum beside a keyword',
      obj({ x: { enum: ['a'], maxLength: 3 } }),
      'schema.properties.x.maxLength',
    ],
    [
      'enum value of another type',
      obj({ x: { type: 'string', enum: ['a', 1] } }),
      'schema.properties.x.enum[1]',
    ],
    ['empty enum', obj({ x: { enum: [] } }), 'schema.properties.x.enum'],
    [
      'anyOf beside type',
      obj({ x: { type: 'string', anyOf: [{ type: 'string' }] } }),
      'schema.properties.x.type',
    ],
    [
      '$ref beside a keyword',
      obj({ x: { $ref: '#', type: 'object' } }),
      'schema.properties.x.type',
    ],
    [
      'remote $ref',
      obj({ x: { $ref: 'https://x.y/s.json' } }),
      'schema.properties.x.$ref',
      /local/,
    ],
    ['anchor $ref', obj({ x: { $ref: '#foo' } }), 'schema.properties.x.$ref'],
    ['escaped $ref', { $defs: { 'a/b': { type: 'string' } }, $ref: '#/$defs/a~1b' }, 'schema.$ref'],
    ['dangling $ref', obj({ x: { $ref: '#/$defs/nope' } }), 'schema.properties.x.$ref'],
    ['$ref into a keyword', obj({ x: { $ref: '#/required' } }), 'schema.properties.x.$ref'],
    [
      '$ref cycle',
      {
        $defs: { a: { $ref: '#/$defs/b' }, b: { anyOf: [{ $ref: '#/$defs/a' }] } },
        $ref: '#/$defs/a',
      },
      'schema.$defs.a',
    ],
    ['false schema', obj({ x: false }), 'schema.properties.x'],
    ['required unknown', { type: 'object', properties: {}, required: ['a'] }, 'schema.required[0]'],
    [
      'property name with a quote',
      obj({ 'a"b': { type: 'string' } }),
      'schema.properties["a\\"b"]',
    ],
    [
      'min above max',
      obj({ x: { type: 'array', minItems: 3, maxItems: 1 } }),
      'schema.properties.x.minItems',
    ],
    [
      'no integer left',
      obj({ x: { type: 'integer', minimum: 0.2, maximum: 0.8 } }),
      'schema.properties.x.maximum',
    ],
    [
      'no number left',
      obj({ x: { type: 'number', exclusiveMinimum: 1, maximum: 1 } }),
      'schema.properties.x.maximum',
    ],
    [
      'boolean exclusiveMinimum',
      obj({ x: { type: 'number', exclusiveMinimum: true } }),
      'schema.properties.x.exclusiveMinimum',
    ],
    [
      'maxLength too large',
      obj({ x: { type: 'string', maxLength: SCHEMA_LIMITS.maxLength + 1 } }),
      'schema.properties.x.maxLength',
    ],
    [
      'pattern with a length',
      obj({ x: { type: 'string', pattern: 'a', maxLength: 3 } }),
      'schema.properties.x.maxLength',
    ],
    [
      'format with a length',
      obj({ x: { type: 'string', format: 'date', maxLength: 3 } }),
      'schema.properties.x.maxLength',
    ],
    [
      'lookahead pattern',
      obj({ x: { type: 'string', pattern: '(?=a)' } }),
      'schema.properties.x.pattern',
      /lookahead/,
    ],
    [
      'invalid pattern',
      obj({ x: { type: 'string', pattern: '(' } }),
      'schema.properties.x.pattern',
    ],
    ['bad type', { type: 'float' }, 'schema.type'],
    ['not a schema', obj({ x: 3 }), 'schema.properties.x'],
  ];
  for (const [name, schema, path, message] of REFUSED) {
    it(name, () => {
      const error = refusal(schema);
      expect(error, 'accepted').toBeInstanceOf(SchemaError);
      expect(error!.path).toBe(path);
      expect(error!.message.startsWith(`\`${path}\`: `)).toBe(true);
      if (message) expect(error!.message).toMatch(message);
    });
  }

  it('names the keyword and tells unsupported from invalid', () => {
    const unsupported = refusal(obj({ d: { type: 'string', format: 'ipv5' } }))!;
    expect([unsupported.keyword, unsupported.reason]).toEqual(['format', 'unsupported_schema']);
    const invalid = refusal({ type: 'array', minItems: -1 })!;
    expect([invalid.keyword, invalid.reason]).toEqual(['minItems', 'invalid_schema']);
  });

  it('bounds the size, the depth and the grammar rules', () => {
    let deep: unknown = { type: 'string' };
    for (let i = 0; i < SCHEMA_LIMITS.maxDepth + 1; i++) deep = { type: 'array', items: deep };
    expect(refusal(deep)?.message).toMatch(/nested deeper/);
    const wide = obj(
      Object.fromEntries(
        Array.from({ length: SCHEMA_LIMITS.maxSchemas + 1 }, (_, i) => [`p${i}`, true]),
      ),
    );
    expect(refusal(wide)?.message).toMatch(/subschemas/);
    const manyEnums = obj({
      e: { enum: Array.from({ length: SCHEMA_LIMITS.maxEnumValues + 1 }, (_, i) => i) },
    });
    expect(refusal(manyEnums)?.message).toMatch(/enum/);
    const lengths = obj(
      Object.fromEntries(
        Array.from({ length: 6 }, (_, i) => [`s${i}`, { type: 'string', maxLength: 60 - i }]),
      ),
    );
    // Equal bounds share their rules: counted once.
    const same = obj(
      Object.fromEntries(
        Array.from({ length: 6 }, (_, i) => [`s${i}`, { type: 'string', maxLength: 60 }]),
      ),
    );
    expect(refusal(same)).toBeUndefined();
    expect(refusal(lengths)?.message).toMatch(/grammar rules/);
    expect(refusal(lengths)?.path).toBe('schema.properties.s4.maxLength');
    expect(() => parseSchemaText('x'.repeat(SCHEMA_LIMITS.maxBytes + 1))).toThrow(/bytes/);
    expect(() => parseSchemaText('{"type":')).toThrow(SchemaError);
  });

  it('starts paths where it is told', () => {
    expect(() =>
      checkSchema({ type: 'integer', multipleOf: 2 }, 'response_format.json_schema'),
    ).toThrow('`response_format.json_schema.multipleOf`');
  });
});
