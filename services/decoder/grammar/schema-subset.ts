// The JSON Schema subset Loupe constrains decoding to (OpenAI strict mode's, plus bounds), as
// one pure check: anything outside it is a SchemaError naming the keyword and where it is
// (`schema.properties.date.format`), which the gateway answers as 400 with that `param` and
// the decoder as INVALID_ARGUMENT. No imports beyond regex.ts, so the gateway can use it too.
// What is in the subset, and why the rest is not: docs/structured-output.md.
import { compilePattern, lengthPattern, PatternError } from './regex.js';

/** Why a schema was refused: where (a path from `schema`), which keyword, and what is wrong. */
export class SchemaError extends Error {
  override readonly name = 'SchemaError';
  constructor(
    /** `schema.properties.date.format`: the offending value's place (the gateway's `param`). */
    readonly path: string,
    /** The keyword at fault, when one is (`format`). */
    readonly keyword: string | undefined,
    message: string,
    /** `unsupported_schema`: valid JSON Schema outside the subset; `invalid_schema`: not valid. */
    readonly reason: 'unsupported_schema' | 'invalid_schema' = 'unsupported_schema',
  ) {
    super(`\`${path}\`: ${message}`);
  }
}

/** Bounds on a schema's size, and on the bounds it may set (they set the grammar's size). */
export const SCHEMA_LIMITS = {
  /** Longest schema, UTF-8 bytes of its JSON text. */
  maxBytes: 64 * 1024,
  /** Deepest nesting of subschemas (the root is at depth 0). */
  maxDepth: 32,
  /** Most subschemas in all. */
  maxSchemas: 5000,
  /** Most `enum` values in all. */
  maxEnumValues: 1000,
  /** Largest `minItems` / `maxItems`. */
  maxItems: 1000,
  /**
   * Largest `minLength` / `maxLength`: each character position up to the bound is a grammar
   * rule, and compiling one costs ~25 ms at a 32k vocabulary (docs/structured-output.md).
   */
  maxLength: 64,
  /** Most grammar rules made for patterns and length bounds, all in one schema. */
  maxPatternRules: 256,
} as const;

// `format`s, each enforced as the pattern given here (no xgrammar built-in: its `ipv4` takes
// "1.2.3.04" and its classes mishandle what is outside ASCII). OpenAI strict mode's list.
const DATE =
  '(?:\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|02-(?:0[1-9]|1\\d|2[0-8]))|(?:\\d\\d(?:[2468][048]|[13579][26]|0[48])|(?:[02468][048]|[13579][26])00)-02-29)';
const TIME =
  '(?:[01]\\d|2[0-3]):[0-5]\\d:(?:[0-5]\\d|60)(?:\\.\\d+)?(?:[Zz]|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)';
const DUR_TIME = 'T(?:\\d+H(?:\\d+M(?:\\d+S)?)?|\\d+M(?:\\d+S)?|\\d+S)';
const H16 = '[0-9a-fA-F]{1,4}';
const IPV4 =
  '(?:(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\.){3}(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)';
const LS32 = `(?:${H16}:${H16}|${IPV4})`;
/**
 * RFC 3986's IPv6address, its seven alternatives that end in ls32 sharing it (the grammar
 * writes a pattern's tail once per alternative that leads into it: regex.ts Rules).
 */
const IPV6 = [
  `(?:(?:${H16}:){6}|::(?:${H16}:){5}|(?:${H16})?::(?:${H16}:){4}|(?:(?:${H16}:){0,1}${H16})?::(?:${H16}:){3}|(?:(?:${H16}:){0,2}${H16})?::(?:${H16}:){2}|(?:(?:${H16}:){0,3}${H16})?::${H16}:|(?:(?:${H16}:){0,4}${H16})?::)${LS32}`,
  `(?:(?:${H16}:){0,5}${H16})?::${H16}`,
  `(?:(?:${H16}:){0,6}${H16})?::`,
].join('|');
const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?';
const HOSTNAME = `${LABEL}(?:\\.${LABEL})*`;
const ATOM = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+";

/**
 * The `format`s enforced, each as a pattern (docs/structured-output.md, "Formats"): `date`,
 * `time` and `date-time` as RFC 3339 (with leap years and leap seconds), `duration` as RFC
 * 3339's ISO 8601 durations, `email` as a dot-atom address at a host name, `hostname` as RFC
 * 1123 labels (their 63-character and the name's 253-character limits are not enforced), `ipv4` dotted decimal without leading
 * zeros, `ipv6` RFC 3986, `uuid` 8-4-4-4-12 hex digits.
 */
export const FORMAT_PATTERNS: Readonly<Record<string, string>> = {
  'date-time': `^${DATE}[Tt]${TIME}$`,
  date: `^${DATE}$`,
  time: `^${TIME}$`,
  duration: `^P(?:(?:\\d+Y(?:\\d+M(?:\\d+D)?)?|\\d+M(?:\\d+D)?|\\d+D)(?:${DUR_TIME})?|${DUR_TIME}|\\d+W)$`,
  email: `^${ATOM}(?:\\.${ATOM})*@${HOSTNAME}$`,
  hostname: `^${HOSTNAME}$`,
  ipv4: `^${IPV4}$`,
  ipv6: `^(?:${IPV6})$`,
  uuid: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$',
};

/** The `format`s enforced. */
export const SUPPORTED_FORMATS = Object.keys(FORMAT_PATTERNS);

const TYPES = ['object', 'array', 'string', 'number', 'integer', 'boolean', 'null'] as const;
export type JsonType = (typeof TYPES)[number];

/** Keywords that constrain nothing: allowed anywhere, ignored. */
const ANNOTATIONS = new Set([
  'title',
  'description',
  '$comment',
  'examples',
  'default',
  'deprecated',
  'readOnly',
  'writeOnly',
  '$schema',
]);
const DEFINITIONS = ['$defs', 'definitions'] as const;
const FAMILY_KEYWORDS: Record<string, readonly string[]> = {
  object: ['properties', 'required', 'additionalProperties'],
  array: ['items', 'minItems', 'maxItems'],
  string: ['minLength', 'maxLength', 'pattern', 'format'],
  number: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'],
};
const FAMILY_OF: Record<string, string> = Object.fromEntries(
  Object.entries(FAMILY_KEYWORDS).flatMap(([family, words]) => words.map((w) => [w, family])),
);
/** Keywords of valid JSON Schema that the subset leaves out, with what to do instead. */
const REFUSED_HINTS: Record<string, string> = {
  oneOf: 'use `anyOf`',
  allOf: 'merge the subschemas into one',
  not: '',
  if: '',
  then: '',
  else: '',
  multipleOf: '',
  uniqueItems: '',
  contains: '',
  minContains: '',
  maxContains: '',
  prefixItems: '',
  additionalItems: '',
  unevaluatedItems: '',
  unevaluatedProperties: '',
  patternProperties: 'list the properties',
  propertyNames: 'list the properties',
  minProperties: '',
  maxProperties: '',
  dependentRequired: '',
  dependentSchemas: '',
  dependencies: '',
  $anchor: 'use `$ref` to `#/$defs/...`',
  $dynamicRef: '',
  $dynamicAnchor: '',
  $recursiveRef: '',
  nullable: 'use `"type": [..., "null"]` or `anyOf` with `{"type": "null"}`',
  contentEncoding: '',
  contentMediaType: '',
};

/** `schema.properties.date`, `schema.properties["a b"]`, `schema.anyOf[1]`. */
export function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key)
    ? `${path}.${key}`
    : `${path}[${JSON.stringify(key)}]`;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The JSON type of a value (`integer` for whole numbers). */
export function jsonType(value: unknown): JsonType {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
  return typeof value as JsonType;
}

/** The types a schema names (`type` as a string or a list); undefined when it has none. */
export function schemaTypes(schema: Record<string, unknown>): JsonType[] | undefined {
  const t = schema.type;
  if (t === undefined) return undefined;
  return (Array.isArray(t) ? t : [t]) as JsonType[];
}

/** Parses a schema's JSON text (bounded in size); the result still needs checkSchema. */
export function parseSchemaText(text: string, path = 'schema'): unknown {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > SCHEMA_LIMITS.maxBytes) {
    throw new SchemaError(
      path,
      undefined,
      `the schema has ${bytes} bytes; at most ${SCHEMA_LIMITS.maxBytes}`,
      'invalid_schema',
    );
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new SchemaError(
      path,
      undefined,
      `not valid JSON: ${(error as Error).message}`,
      'invalid_schema',
    );
  }
}

/** What a checked schema has, for the caller's logs and metrics. */
export interface SchemaSummary {
  schemas: number;
  depth: number;
  /** Whether some pattern's class was widened (regex.ts charSetRule). */
  approximatedPattern: boolean;
}

interface Walk {
  root: unknown;
  /** Every subschema (object) checked, with its path. */
  at: Map<object, string>;
  refs: Array<{ path: string; ref: string; from: object }>;
  /** Subschemas reached from a subschema without consuming any text (anyOf branches). */
  immediate: Map<object, object[]>;
  schemas: number;
  depth: number;
  enumValues: number;
  approximatedPattern: boolean;
  patternRules: number;
  /** Patterns (and length patterns) counted already. */
  patterns: Set<string>;
}

/**
 * Checks that `schema` (parsed JSON) is in the subset; throws SchemaError naming the first
 * keyword that is not (and its path, from `path`).
 */
export function checkSchema(schema: unknown, path = 'schema'): SchemaSummary {
  const walk: Walk = {
    root: schema,
    at: new Map(),
    refs: [],
    immediate: new Map(),
    schemas: 0,
    depth: 0,
    enumValues: 0,
    approximatedPattern: false,
    patternRules: 0,
    patterns: new Set(),
  };
  if (isObject(schema)) {
    for (const key of ['$id']) {
      if (key in schema && typeof schema[key] !== 'string') {
        throw new SchemaError(childPath(path, key), key, `\`${key}\` must be a string`);
      }
    }
  }
  check(schema, path, 0, walk, true);
  resolveRefs(walk);
  return {
    schemas: walk.schemas,
    depth: walk.depth,
    approximatedPattern: walk.approximatedPattern,
  };
}

function check(schema: unknown, path: string, depth: number, walk: Walk, isRoot = false): void {
  if (depth > SCHEMA_LIMITS.maxDepth) {
    throw new SchemaError(path, undefined, `nested deeper than ${SCHEMA_LIMITS.maxDepth} levels`);
  }
  walk.depth = Math.max(walk.depth, depth);
  if (++walk.schemas > SCHEMA_LIMITS.maxSchemas) {
    throw new SchemaError(path, undefined, `more than ${SCHEMA_LIMITS.maxSchemas} subschemas`);
  }
  if (schema === true) return;
  if (schema === false) {
    throw new SchemaError(path, undefined, 'the schema `false` matches nothing');
  }
  if (!isObject(schema)) {
    throw new SchemaError(
      path,
      undefined,
      'a schema must be an object (or `true`)',
      'invalid_schema',
    );
  }
  walk.at.set(schema, path);
  const at = (key: string) => childPath(path, key);

  for (const key of Object.keys(schema)) {
    if (ANNOTATIONS.has(key) || (DEFINITIONS as readonly string[]).includes(key)) continue;
    if (key === '$id' && isRoot) continue;
    if (key in FAMILY_OF || ['type', 'enum', 'const', 'anyOf', '$ref'].includes(key)) continue;
    const hint = REFUSED_HINTS[key];
    throw new SchemaError(
      at(key),
      key,
      `\`${key}\` is not supported${hint ? `: ${hint}` : ''} (docs/structured-output.md lists the subset)`,
    );
  }

  for (const key of DEFINITIONS) {
    if (!(key in schema)) continue;
    const defs = schema[key];
    if (!isObject(defs)) {
      throw new SchemaError(
        at(key),
        key,
        `\`${key}\` must be an object of schemas`,
        'invalid_schema',
      );
    }
    for (const [name, def] of Object.entries(defs))
      check(def, childPath(at(key), name), depth + 1, walk);
  }

  const types = checkType(schema, at);
  const present = (keys: readonly string[]) => keys.filter((k) => k in schema);
  const structural = Object.keys(schema).filter(
    (k) => !ANNOTATIONS.has(k) && !(DEFINITIONS as readonly string[]).includes(k) && k !== '$id',
  );

  if ('$ref' in schema) {
    const ref = schema.$ref;
    if (typeof ref !== 'string') {
      throw new SchemaError(at('$ref'), '$ref', '`$ref` must be a string', 'invalid_schema');
    }
    const other = structural.find((k) => k !== '$ref');
    if (other) {
      throw new SchemaError(
        at(other),
        other,
        `\`${other}\` next to \`$ref\` is not supported: move it into the referenced schema`,
      );
    }
    walk.refs.push({ path: at('$ref'), ref, from: schema });
    return;
  }

  if ('enum' in schema || 'const' in schema) {
    const key = 'enum' in schema ? 'enum' : 'const';
    const other = structural.find((k) => k !== key && k !== 'type');
    if (other) {
      throw new SchemaError(
        at(other),
        other,
        `\`${other}\` next to \`${key}\` is not supported (only \`type\` may be)`,
      );
    }
    const values = key === 'enum' ? schema.enum : [schema.const];
    if (!Array.isArray(values) || values.length === 0) {
      throw new SchemaError(at(key), key, '`enum` must be a non-empty array', 'invalid_schema');
    }
    walk.enumValues += values.length;
    if (walk.enumValues > SCHEMA_LIMITS.maxEnumValues) {
      throw new SchemaError(
        at(key),
        key,
        `more than ${SCHEMA_LIMITS.maxEnumValues} \`enum\` values in the schema`,
      );
    }
    values.forEach((value, i) => {
      const where = key === 'enum' ? childPath(at(key), i) : at(key);
      checkJsonValue(value, where, key, 0);
      const t = jsonType(value);
      if (types && !types.includes(t) && !(t === 'integer' && types.includes('number'))) {
        throw new SchemaError(where, key, `the value is a ${t}, which \`type\` does not allow`);
      }
    });
    return;
  }

  if ('anyOf' in schema) {
    const other = structural.find((k) => k !== 'anyOf');
    if (other) {
      throw new SchemaError(
        at(other),
        other,
        `\`${other}\` next to \`anyOf\` is not supported: move it into each option`,
      );
    }
    const options = schema.anyOf;
    if (!Array.isArray(options) || options.length === 0) {
      throw new SchemaError(
        at('anyOf'),
        'anyOf',
        '`anyOf` must be a non-empty array of schemas',
        'invalid_schema',
      );
    }
    const children: object[] = [];
    options.forEach((option, i) => {
      check(option, childPath(at('anyOf'), i), depth + 1, walk);
      if (isObject(option)) children.push(option);
    });
    walk.immediate.set(schema, children);
    return;
  }

  // Keywords of one kind of value need `type` to name that kind.
  for (const key of structural) {
    const family = FAMILY_OF[key];
    if (!family) continue;
    const fits = types?.some((t) => (t === 'integer' ? 'number' : t) === family);
    if (!fits) {
      throw new SchemaError(
        at(key),
        key,
        `\`${key}\` needs \`"type"\` to include ${family === 'number' ? '"number" or "integer"' : `"${family}"`}`,
      );
    }
  }

  if (types?.includes('object')) checkObject(schema, at, depth, walk);
  if (types?.includes('array')) checkArray(schema, at, depth, walk);
  if (types?.includes('string')) checkString(schema, at, walk, present);
  if (types?.includes('number') || types?.includes('integer')) checkNumber(schema, at, types);
}

function checkType(
  schema: Record<string, unknown>,
  at: (key: string) => string,
): JsonType[] | undefined {
  if (!('type' in schema)) return undefined;
  const t = schema.type;
  const list = Array.isArray(t) ? t : [t];
  if (list.length === 0 || list.some((x) => !TYPES.includes(x as JsonType))) {
    throw new SchemaError(
      at('type'),
      'type',
      `\`type\` must be one of ${TYPES.map((x) => `"${x}"`).join(', ')} or a list of them`,
      'invalid_schema',
    );
  }
  if (new Set(list).size !== list.length) {
    throw new SchemaError(at('type'), 'type', '`type` lists a type twice', 'invalid_schema');
  }
  return list as JsonType[];
}

function checkObject(
  schema: Record<string, unknown>,
  at: (key: string) => string,
  depth: number,
  walk: Walk,
): void {
  const properties = schema.properties ?? {};
  if (!isObject(properties)) {
    throw new SchemaError(
      at('properties'),
      'properties',
      '`properties` must be an object of schemas',
      'invalid_schema',
    );
  }
  for (const [name, property] of Object.entries(properties)) {
    const where = childPath(at('properties'), name);
    // xgrammar 0.1.27 cannot write property names with these (docs/structured-output.md).
    if ([...name].some((c) => c === '"' || c === '\\' || c.charCodeAt(0) < 0x20)) {
      throw new SchemaError(
        where,
        'properties',
        'property names with `"`, `\\` or control characters are not supported',
      );
    }
    check(property, where, depth + 1, walk);
  }
  if ('required' in schema) {
    const required = schema.required;
    if (!Array.isArray(required) || required.some((r) => typeof r !== 'string')) {
      throw new SchemaError(
        at('required'),
        'required',
        '`required` must be an array of property names',
        'invalid_schema',
      );
    }
    if (new Set(required).size !== required.length) {
      throw new SchemaError(
        at('required'),
        'required',
        '`required` lists a name twice',
        'invalid_schema',
      );
    }
    required.forEach((name: string, i) => {
      if (!(name in properties)) {
        throw new SchemaError(
          childPath(at('required'), i),
          'required',
          `"${name}" is required but not in \`properties\` (objects are closed: only listed properties are written)`,
        );
      }
    });
  }
  if ('additionalProperties' in schema && schema.additionalProperties !== false) {
    throw new SchemaError(
      at('additionalProperties'),
      'additionalProperties',
      '`additionalProperties` must be `false` (or left out, which means the same here): objects have only the listed properties',
    );
  }
}

function checkArray(
  schema: Record<string, unknown>,
  at: (key: string) => string,
  depth: number,
  walk: Walk,
): void {
  if ('items' in schema) {
    if (Array.isArray(schema.items)) {
      throw new SchemaError(
        at('items'),
        'items',
        'tuple `items` (a list of schemas) are not supported',
      );
    }
    if (schema.items === false) {
      throw new SchemaError(
        at('items'),
        'items',
        '`"items": false` is not supported: use `"maxItems": 0`',
      );
    }
    check(schema.items, at('items'), depth + 1, walk);
  }
  checkCountBounds(schema, at, 'minItems', 'maxItems', SCHEMA_LIMITS.maxItems);
}

function checkString(
  schema: Record<string, unknown>,
  at: (key: string) => string,
  walk: Walk,
  present: (keys: readonly string[]) => string[],
): void {
  checkCountBounds(schema, at, 'minLength', 'maxLength', SCHEMA_LIMITS.maxLength);
  const lengths = present(['minLength', 'maxLength']);
  if ('pattern' in schema) {
    if (typeof schema.pattern !== 'string') {
      throw new SchemaError(
        at('pattern'),
        'pattern',
        '`pattern` must be a string',
        'invalid_schema',
      );
    }
    if (lengths.length > 0) {
      throw new SchemaError(
        at(lengths[0]!),
        lengths[0],
        `\`${lengths[0]}\` together with \`pattern\` is not supported: put the length in the pattern (\`{m,n}\`)`,
      );
    }
    try {
      const grammar = compilePattern(schema.pattern);
      if (grammar.approximated) walk.approximatedPattern = true;
      if (!walk.patterns.has(schema.pattern)) {
        addRules(walk, grammar.ruleCount, at('pattern'), 'pattern');
        walk.patterns.add(schema.pattern);
      }
    } catch (error) {
      if (!(error instanceof PatternError)) throw error;
      throw new SchemaError(at('pattern'), 'pattern', `the pattern: ${error.message}`);
    }
  } else if (lengths.length > 0 && !('format' in schema)) {
    const min = (schema.minLength as number | undefined) ?? 0;
    const max = schema.maxLength as number | undefined;
    const pattern = lengthPattern(min, max);
    if (!walk.patterns.has(pattern)) {
      const rules = compilePattern(pattern, 'n', { trusted: true }).ruleCount;
      addRules(walk, rules, at(lengths[lengths.length - 1]!), lengths[lengths.length - 1]);
      walk.patterns.add(pattern);
    }
  }
  if ('format' in schema) {
    const format = schema.format;
    if (typeof format !== 'string') {
      throw new SchemaError(at('format'), 'format', '`format` must be a string', 'invalid_schema');
    }
    if (!Object.hasOwn(FORMAT_PATTERNS, format)) {
      throw new SchemaError(
        at('format'),
        'format',
        `format "${format}" is not supported (supported: ${SUPPORTED_FORMATS.join(', ')}; or use \`pattern\`)`,
      );
    }
    if (lengths.length > 0 && !('pattern' in schema)) {
      throw new SchemaError(
        at(lengths[0]!),
        lengths[0],
        `\`${lengths[0]}\` together with \`format\` is not supported`,
      );
    }
  }
}

/**
 * Counts the grammar rules of patterns and length bounds against the schema's budget (each
 * distinct one once: equal ones share their rules). Formats are not counted: their rules are
 * few or of narrow classes, cheap to compile (docs/structured-output.md, "Costs").
 */
function addRules(walk: Walk, rules: number, path: string, keyword: string | undefined): void {
  walk.patternRules += rules;
  if (walk.patternRules > SCHEMA_LIMITS.maxPatternRules) {
    throw new SchemaError(
      path,
      keyword,
      `the schema's patterns and length bounds need more than ${SCHEMA_LIMITS.maxPatternRules} grammar rules in all (about one per character position a bound counts): use fewer or smaller bounds`,
    );
  }
}

function checkCountBounds(
  schema: Record<string, unknown>,
  at: (key: string) => string,
  minKey: string,
  maxKey: string,
  limit: number,
): void {
  for (const key of [minKey, maxKey]) {
    if (!(key in schema)) continue;
    const v = schema[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
      throw new SchemaError(
        at(key),
        key,
        `\`${key}\` must be a non-negative integer`,
        'invalid_schema',
      );
    }
    if (v > limit)
      throw new SchemaError(at(key), key, `\`${key}\` above ${limit} is not supported`);
  }
  const min = schema[minKey] as number | undefined;
  const max = schema[maxKey] as number | undefined;
  if (min !== undefined && max !== undefined && min > max) {
    throw new SchemaError(
      at(minKey),
      minKey,
      `\`${minKey}\` (${min}) is above \`${maxKey}\` (${max})`,
    );
  }
}

/** The range a number schema allows, from its four bounds (each kept strict or not). */
export interface NumberRange {
  min?: { value: number; strict: boolean };
  max?: { value: number; strict: boolean };
}

/** The tightest lower and upper bounds of a schema's four numeric keywords. */
export function numberRange(schema: Record<string, unknown>): NumberRange {
  const range: NumberRange = {};
  const tighten = (side: 'min' | 'max', value: unknown, strict: boolean) => {
    if (typeof value !== 'number') return;
    const current = range[side];
    const better =
      !current ||
      (side === 'min' ? value > current.value : value < current.value) ||
      (value === current.value && strict);
    if (better) range[side] = { value, strict };
  };
  tighten('min', schema.minimum, false);
  tighten('min', schema.exclusiveMinimum, true);
  tighten('max', schema.maximum, false);
  tighten('max', schema.exclusiveMaximum, true);
  return range;
}

/** The integers a range allows, [lo, hi] (undefined: unbounded), as BigInts. */
export function integerRange(range: NumberRange): { lo?: bigint; hi?: bigint } {
  const out: { lo?: bigint; hi?: bigint } = {};
  if (range.min) {
    const v = range.min.value;
    out.lo = range.min.strict ? BigInt(Math.floor(v)) + 1n : BigInt(Math.ceil(v));
  }
  if (range.max) {
    const v = range.max.value;
    out.hi = range.max.strict ? BigInt(Math.ceil(v)) - 1n : BigInt(Math.floor(v));
  }
  return out;
}

function checkNumber(
  schema: Record<string, unknown>,
  at: (key: string) => string,
  types: JsonType[],
): void {
  for (const key of FAMILY_KEYWORDS.number!) {
    if (!(key in schema)) continue;
    const v = schema[key];
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      throw new SchemaError(
        at(key),
        key,
        `\`${key}\` must be a number${typeof v === 'boolean' ? ' (the draft-04 boolean form is not supported)' : ''}`,
        'invalid_schema',
      );
    }
  }
  const range = numberRange(schema);
  const { min, max } = range;
  const badKey = () =>
    ['maximum', 'exclusiveMaximum', 'minimum', 'exclusiveMinimum'].find((k) => k in schema)!;
  if (min && max) {
    const empty = min.value > max.value || (min.value === max.value && (min.strict || max.strict));
    if (empty && types.includes('number')) {
      throw new SchemaError(at(badKey()), badKey(), 'the bounds leave no number');
    }
  }
  if (types.includes('integer') && !types.includes('number')) {
    const { lo, hi } = integerRange(range);
    if (lo !== undefined && hi !== undefined && lo > hi) {
      throw new SchemaError(at(badKey()), badKey(), 'the bounds leave no integer');
    }
  }
}

/** Values in `enum`/`const`: JSON (no undefined or non-finite numbers), not absurdly deep. */
function checkJsonValue(value: unknown, path: string, key: string, depth: number): void {
  if (depth > SCHEMA_LIMITS.maxDepth)
    throw new SchemaError(path, key, 'the value is nested too deeply');
  if (typeof value === 'number' && !Number.isFinite(value)) {
    throw new SchemaError(path, key, 'not a JSON value', 'invalid_schema');
  }
  if (Array.isArray(value)) value.forEach((v) => checkJsonValue(v, path, key, depth + 1));
  else if (isObject(value))
    Object.values(value).forEach((v) => checkJsonValue(v, path, key, depth + 1));
}

/** A `$ref`'s target: `#` or a JSON pointer from the root to a subschema checked above. */
function resolveRefs(walk: Walk): void {
  const targets = new Map<object, object>();
  for (const { path, ref, from } of walk.refs) {
    if (!ref.startsWith('#')) {
      throw new SchemaError(
        path,
        '$ref',
        'only local references (`#/$defs/Name`, `#`) are supported',
      );
    }
    if (ref !== '#' && !ref.startsWith('#/')) {
      throw new SchemaError(
        path,
        '$ref',
        'anchors (`#name`) are not supported: use `#/$defs/Name`',
      );
    }
    if (/[~%]/.test(ref)) {
      throw new SchemaError(
        path,
        '$ref',
        'references with escapes (`~0`, `~1`, `%xx`) are not supported: rename the definition',
      );
    }
    let target: unknown = walk.root;
    const segments = ref === '#' ? [] : ref.slice(2).split('/');
    for (let i = 0; i < segments.length && target !== undefined; i++) {
      const segment = segments[i]!;
      const node = target;
      if (!isObject(node)) {
        target = undefined;
        break;
      }
      // Only into definitions, properties, items and anyOf options, and not below a type list
      // with keywords (lower.ts splits those into options, which would move what is below).
      const types = schemaTypes(node);
      if (types && types.length > 1 && Object.keys(node).some((k) => k in FAMILY_OF)) {
        throw new SchemaError(
          path,
          '$ref',
          `"${ref}" points inside a schema with a list of types: move that part to \`$defs\``,
        );
      }
      const name = segments[i + 1];
      if ((['$defs', 'definitions', 'properties'] as const).some((k) => k === segment)) {
        const map = node[segment];
        target =
          isObject(map) && name !== undefined && Object.hasOwn(map, name) ? map[name] : undefined;
        i++;
      } else if (segment === 'items') {
        target = node.items;
      } else if (segment === 'anyOf' && name !== undefined && /^\d+$/.test(name)) {
        target = Array.isArray(node.anyOf) ? (node.anyOf[Number(name)] as unknown) : undefined;
        i++;
      } else {
        throw new SchemaError(
          path,
          '$ref',
          `"${ref}": references may go through \`$defs\`, \`definitions\`, \`properties\`, \`items\` and \`anyOf\` only`,
        );
      }
    }
    if (target === undefined) {
      throw new SchemaError(path, '$ref', `"${ref}" names nothing in the schema`, 'invalid_schema');
    }
    if (target === true) continue;
    if (!isObject(target) || !walk.at.has(target)) {
      throw new SchemaError(path, '$ref', `"${ref}" does not name a schema`, 'invalid_schema');
    }
    targets.set(from, target);
  }
  // A cycle of references (through `anyOf` options) that writes nothing would never end.
  const state = new Map<object, 'open' | 'done'>();
  const visit = (node: object): void => {
    if (state.get(node) === 'done') return;
    if (state.get(node) === 'open') {
      const path = walk.at.get(node)!;
      throw new SchemaError(
        path,
        '$ref',
        'a cycle of references that does not pass through an object property or an array item',
      );
    }
    state.set(node, 'open');
    const target = targets.get(node);
    if (target) visit(target);
    for (const child of walk.immediate.get(node) ?? []) visit(child);
    state.set(node, 'done');
  };
  for (const node of walk.at.keys()) visit(node);
}
