// From a checked schema (schema-subset.ts) to the grammar xgrammar compiles. xgrammar turns
// the structure (objects, arrays, enums, anyOf, $ref) into EBNF itself; the leaves it gets
// wrong in 0.1.27 are written here instead: integer and number ranges (it admits 121 for
// `maximum: 120` and 1.5 for `maximum: 1`), strings with length bounds (it admits raw control
// characters, which JSON forbids), patterns (regex.ts) and formats (as the patterns of
// schema-subset.ts FORMAT_PATTERNS). Each such leaf is swapped for a
// `const` placeholder string, xgrammar writes the EBNF of the rest, and the placeholder's
// literal in it is replaced by the rule made here. Pure (no xgrammar): constraint.ts runs it.
// See docs/structured-output.md, "How a schema becomes a grammar".
import { compilePattern, lengthPattern } from './regex.js';
import {
  FORMAT_PATTERNS,
  integerRange,
  numberRange,
  schemaTypes,
  type NumberRange,
} from './schema-subset.js';

/** A leaf written here: the placeholder xgrammar sees, and the rules that replace it. */
export interface LoweredLeaf {
  /** The `const` string put in its place. */
  marker: string;
  /** The rule that replaces the placeholder's literal. */
  name: string;
  /** EBNF rules, the first named `name`. */
  rules: string;
}

export interface LoweredSchema {
  /** The schema with placeholders, for xgrammar. */
  schema: unknown;
  leaves: LoweredLeaf[];
}

const FAMILY_KEYWORDS: Record<string, readonly string[]> = {
  object: ['properties', 'required', 'additionalProperties'],
  array: ['items', 'minItems', 'maxItems'],
  string: ['minLength', 'maxLength', 'pattern', 'format'],
  number: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'],
  integer: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'],
};
const ALL_FAMILY_KEYWORDS = new Set(Object.values(FAMILY_KEYWORDS).flat());

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * `schema` (checked by checkSchema) with the leaves xgrammar gets wrong swapped for
 * placeholders. `tag` (letters and digits) makes the markers and rule names unique: pass a
 * random one, so that no string in a user's schema can equal a marker.
 */
export function lowerSchema(schema: unknown, tag: string): LoweredSchema {
  if (!/^[a-z0-9]+$/.test(tag)) throw new Error('the tag must be lowercase letters and digits');
  const leaves: LoweredLeaf[] = [];
  // Equal leaves (the same range, pattern, format or length) share one set of rules.
  const byKey = new Map<string, string>();
  const leaf = (key: string, rules: (name: string) => string): Record<string, unknown> => {
    let marker = byKey.get(key);
    if (marker === undefined) {
      const k = leaves.length;
      marker = `loupe${tag}m${k}`;
      const name = `loupe${tag}r${k}`;
      leaves.push({ marker, name, rules: rules(name) });
      byKey.set(key, marker);
    }
    return { const: marker };
  };

  const lowerDefinitions = (node: Record<string, unknown>, out: Record<string, unknown>) => {
    for (const key of ['$defs', 'definitions'] as const) {
      if (isObject(node[key])) out[key] = lowerEach(node[key]);
    }
  };
  const lowerEach = (map: Record<string, unknown>) =>
    Object.fromEntries(Object.entries(map).map(([k, v]) => [k, lower(v)]));

  const lower = (node: unknown): unknown => {
    if (!isObject(node)) return node;
    const types = schemaTypes(node);
    const combinator = '$ref' in node || 'enum' in node || 'const' in node || 'anyOf' in node;
    if (types && types.length > 1 && !combinator) {
      if (!Object.keys(node).some((k) => ALL_FAMILY_KEYWORDS.has(k))) return node;
      // One option per type, each with its own keywords (keywords for one kind of value apply
      // to that kind only).
      const out: Record<string, unknown> = Object.fromEntries(
        Object.entries(node).filter(([k]) => k !== 'type' && !ALL_FAMILY_KEYWORDS.has(k)),
      );
      lowerDefinitions(node, out);
      out.anyOf = types.map((t) =>
        lower({
          type: t,
          ...Object.fromEntries(
            Object.entries(node).filter(([k]) => FAMILY_KEYWORDS[t]?.includes(k)),
          ),
        }),
      );
      return out;
    }
    const out: Record<string, unknown> = { ...node };
    lowerDefinitions(node, out);
    if (isObject(node.properties)) out.properties = lowerEach(node.properties);
    if ('items' in node) out.items = lower(node.items);
    if (Array.isArray(node.anyOf)) out.anyOf = node.anyOf.map(lower);
    if (combinator || !types) return out;

    // A leaf written here keeps its definitions next to the placeholder (refs may point in).
    const withDefinitions = (placeholder: Record<string, unknown>) => {
      for (const key of ['$defs', 'definitions']) if (key in out) placeholder[key] = out[key];
      return placeholder;
    };
    const type = types[0]!;
    if (type === 'integer' || type === 'number') {
      const range = numberRange(node);
      if (!range.min && !range.max) return out;
      return withDefinitions(
        leaf(
          `${type} ${JSON.stringify(range)}`,
          (name) => `${name} ::= ${type === 'integer' ? integerRule(range) : numberRule(range)}`,
        ),
      );
    }
    if (type === 'string') {
      // A pattern wins over a format (zod sends both, its pattern implementing the format).
      const pattern =
        typeof node.pattern === 'string'
          ? node.pattern
          : typeof node.format === 'string'
            ? FORMAT_PATTERNS[node.format]
            : undefined;
      if (pattern !== undefined) {
        const trusted = typeof node.pattern !== 'string';
        return withDefinitions(
          leaf(`pattern ${pattern}`, (name) => compilePattern(pattern, name, { trusted }).rules),
        );
      }
      const min = node.minLength as number | undefined;
      const max = node.maxLength as number | undefined;
      if (min === undefined && max === undefined) return out;
      return withDefinitions(
        leaf(`length ${min ?? 0} ${max}`, (name) => stringLengthRules(name, min ?? 0, max)),
      );
    }
    return out;
  };
  return { schema: lower(schema), leaves };
}

/**
 * xgrammar's EBNF for the lowered schema with each placeholder's literal replaced by its rule,
 * and the rules appended.
 */
export function assembleGrammar(xgrammarEbnf: string, leaves: readonly LoweredLeaf[]): string {
  let ebnf = xgrammarEbnf;
  for (const { marker, name } of leaves) {
    const literal = `"\\"${marker}\\""`;
    if (!ebnf.includes(literal)) {
      throw new Error(`the grammar lacks the placeholder ${marker} (xgrammar's EBNF changed?)`);
    }
    ebnf = ebnf.split(literal).join(name);
  }
  return [ebnf.trimEnd(), ...leaves.map((l) => l.rules)].join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// Strings with length bounds.

/**
 * Rules for a JSON string of min..max characters (code points; an escape is one character),
 * named `name`: the pattern `^[\s\S]{min,max}$` (regex.ts writes it as a right-linear grammar,
 * one rule per character position up to max).
 */
export function stringLengthRules(name: string, min: number, max: number | undefined): string {
  return compilePattern(lengthPattern(min, max), name, { trusted: true }).rules;
}

// ---------------------------------------------------------------------------------------------
// Integers: canonical JSON integers (no leading zeros, no "-0") in [lo, hi].

const big = (n: bigint) => n.toString();

/** EBNF for the JSON integers a range allows (bounds rounded inward to whole numbers). */
export function integerRule(range: NumberRange): string {
  const { lo, hi } = integerRange(range);
  const options: string[] = [];
  // Negative: magnitudes in [max(1, -hi), -lo].
  if (lo === undefined || lo < 0n) {
    const magLo = hi !== undefined && hi < 0n ? -hi : 1n;
    const magHi = lo === undefined ? undefined : -lo;
    if (magHi === undefined || magLo <= magHi) options.push(`"-" ${magnitudeRule(magLo, magHi)}`);
  }
  if ((lo === undefined || lo <= 0n) && (hi === undefined || hi >= 0n)) options.push('"0"');
  // Positive: magnitudes in [max(1, lo), hi].
  const posLo = lo !== undefined && lo > 1n ? lo : 1n;
  if (hi === undefined || hi >= posLo) options.push(magnitudeRule(posLo, hi));
  if (options.length === 0) throw new Error('the range holds no integer');
  return options.length === 1 ? options[0]! : `(${options.join(' | ')})`;
}

/** Canonical integers in [a, b] (a >= 1; b undefined: unbounded). */
function magnitudeRule(a: bigint, b: bigint | undefined): string {
  const la = big(a).length;
  const options: string[] = [];
  const lb = b === undefined ? la : big(b).length;
  for (let n = la; n <= lb; n++) {
    const low = n === la ? big(a) : '1' + '0'.repeat(n - 1);
    const high = b !== undefined && n === lb ? big(b) : '9'.repeat(n);
    options.push(sameLength(low, high));
  }
  if (b === undefined) options.push(`[1-9] [0-9]{${la},}`);
  return options.length === 1 ? options[0]! : `(${options.join(' | ')})`;
}

/** Digit strings of one length in [low, high] (low <= high, same length). */
function sameLength(low: string, high: string): string {
  if (low === high) return `"${low}"`;
  const n = low.length;
  const l0 = Number(low[0]);
  const h0 = Number(high[0]);
  const rest = (k: number) => (k === 0 ? '' : k === 1 ? ' [0-9]' : ` [0-9]{${k}}`);
  if (l0 === h0) return `"${low[0]}" ${sameLength(low.slice(1), high.slice(1))}`;
  if (/^0*$/.test(low.slice(1)) && /^9*$/.test(high.slice(1))) return `[${l0}-${h0}]${rest(n - 1)}`;
  const options = [`"${low[0]}" ${sameLength(low.slice(1), '9'.repeat(n - 1))}`];
  if (l0 + 1 === h0 - 1) options.push(`"${l0 + 1}"${rest(n - 1)}`);
  else if (l0 + 1 < h0 - 1) options.push(`[${l0 + 1}-${h0 - 1}]${rest(n - 1)}`);
  options.push(`"${high[0]}" ${sameLength('0'.repeat(n - 1), high.slice(1))}`);
  return `(${options.join(' | ')})`;
}

// ---------------------------------------------------------------------------------------------
// Numbers: JSON numbers without exponent ("-"? int ("." digits)?) in a range, compared as exact
// decimals with the bounds as JavaScript writes them (String(0.1) = "0.1").

/** A non-negative decimal: integer digits (no leading zeros) and fraction digits (no trailing). */
interface Decimal {
  int: bigint;
  frac: string;
}

/** |x| as an exact decimal of its shortest round-trip spelling. */
export function decimal(x: number): Decimal {
  const s = String(Math.abs(x));
  const m = /^(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$/.exec(s);
  if (!m) throw new Error(`cannot write ${x} as a decimal`);
  let digits = m[1]! + (m[2] ?? '');
  let point = m[1]!.length + Number(m[3] ?? 0);
  if (point <= 0) {
    digits = '0'.repeat(1 - point) + digits;
    point = 1;
  }
  if (point > digits.length) digits += '0'.repeat(point - digits.length);
  return { int: BigInt(digits.slice(0, point)), frac: digits.slice(point).replace(/0+$/, '') };
}

interface Bound {
  value: Decimal;
  strict: boolean;
}

/** EBNF for the JSON numbers (no exponent) a range allows. */
export function numberRule(range: NumberRange): string {
  const { min, max } = range;
  const options: string[] = [];
  const zero: Decimal = { int: 0n, frac: '' };
  // x >= 0 (0 not twice: "-0" is never written).
  if (!max || max.value > 0 || (max.value === 0 && !max.strict)) {
    const low: Bound = !min || min.value < 0 ? { value: zero, strict: false } : toBound(min);
    const rule = magnitudeDecimalRule(low, max ? toBound(max) : undefined);
    if (rule) options.push(rule);
  }
  // x < 0, written "-" m with m = -x > 0.
  if (!min || min.value < 0) {
    const low: Bound = !max || max.value >= 0 ? { value: zero, strict: true } : toBound(max);
    const rule = magnitudeDecimalRule(low, min ? toBound(min) : undefined);
    if (rule) options.push(`"-" ${rule}`);
  }
  if (options.length === 0) throw new Error('the range holds no number');
  return options.length === 1 ? options[0]! : `(${options.join(' | ')})`;
}

function toBound(b: { value: number; strict: boolean }): Bound {
  return { value: decimal(b.value), strict: b.strict };
}

/** Non-negative numbers m with low <= m <= high (each bound maybe strict; high undefined: none). */
function magnitudeDecimalRule(low: Bound, high: Bound | undefined): string | undefined {
  const li = low.value.int;
  const options: string[] = [];
  if (high && high.value.int === li) {
    const f = fractionRule(
      lowerState(low.value.frac, low.strict),
      upperState(high.value.frac, high.strict),
    );
    if (f !== undefined) options.push(`"${big(li)}"${f}`);
  } else {
    const f1 = fractionRule(lowerState(low.value.frac, low.strict), NONE);
    if (f1 !== undefined) options.push(`"${big(li)}"${f1}`);
    const hi = high?.value.int;
    if (hi === undefined || li + 1n <= hi - 1n) {
      options.push(
        `${magnitudeRule(li + 1n, hi === undefined ? undefined : hi - 1n)} ("." [0-9]+)?`,
      );
    }
    if (high) {
      const f2 = fractionRule(TRIVIAL, upperState(high.value.frac, high.strict));
      if (f2 !== undefined) options.push(`"${big(high.value.int)}"${f2}`);
    }
  }
  if (options.length === 0) return undefined;
  return options.length === 1 ? options[0] : `(${options.join(' | ')})`;
}

// The fraction's digit string F (0.F its value) against a lower and an upper bound, as a small
// automaton over its digits: each state is what the rest of F must still satisfy.
type Lower =
  { kind: 'trivial' } | { kind: 'positive' } | { kind: 'digits'; digits: string; strict: boolean };
type Upper =
  | { kind: 'none' }
  | { kind: 'zero' }
  | { kind: 'never' }
  | { kind: 'digits'; digits: string; strict: boolean };
const TRIVIAL: Lower = { kind: 'trivial' };
const POSITIVE: Lower = { kind: 'positive' };
const NONE: Upper = { kind: 'none' };

/** 0.F >= 0.digits (or > when strict). */
function lowerState(digits: string, strict: boolean): Lower {
  if (digits === '') return strict ? POSITIVE : TRIVIAL;
  return { kind: 'digits', digits, strict };
}

/** 0.F <= 0.digits (or < when strict). */
function upperState(digits: string, strict: boolean): Upper {
  if (digits === '') return strict ? { kind: 'never' } : { kind: 'zero' };
  return { kind: 'digits', digits, strict };
}

/** The optional "." part for a fraction within the bounds: `""`, `"." P`, `("." P)?`. */
function fractionRule(lower: Lower, upper: Upper): string | undefined {
  const empty = emptyAllowed(lower, upper);
  const digits = fractionDigits(lower, upper);
  if (digits === undefined) return empty ? '' : undefined;
  return empty ? ` ("." ${digits})?` : ` "." ${digits}`;
}

function emptyAllowed(lower: Lower, upper: Upper): boolean {
  return lower.kind === 'trivial' && upper.kind !== 'never';
}

/** Non-empty digit strings F within the bounds, or undefined when there are none. */
function fractionDigits(lower: Lower, upper: Upper): string | undefined {
  if (upper.kind === 'never') return undefined;
  if (lower.kind === 'trivial' && upper.kind === 'none') return '[0-9]+';
  if (lower.kind === 'positive' && upper.kind === 'none') return '"0"* [1-9] [0-9]*';
  if (upper.kind === 'zero') {
    if (lower.kind === 'trivial') return '"0"+';
    if (lower.kind === 'positive') return undefined;
  }
  // One step: the first digit c, and what the rest must satisfy.
  const groups: Array<{ from: number; to: number; lower: Lower; upper: Upper }> = [];
  for (let c = 0; c <= 9; c++) {
    const next = step(c, lower, upper);
    if (!next) continue;
    const last = groups[groups.length - 1];
    if (last && last.to === c - 1 && same(last.lower, next.lower) && same(last.upper, next.upper)) {
      last.to = c;
    } else {
      groups.push({ from: c, to: c, ...next });
    }
  }
  const options = groups.map(({ from, to, lower: l, upper: u }) => {
    const head = from === to ? `"${from}"` : `[${from}-${to}]`;
    const rest = fractionDigits(l, u);
    const empty = emptyAllowed(l, u);
    if (rest === undefined) return empty ? head : undefined;
    return empty ? `${head} (${rest})?` : `${head} ${rest}`;
  });
  const valid = options.filter((o): o is string => o !== undefined);
  if (valid.length === 0) return undefined;
  return valid.length === 1 ? valid[0] : `(${valid.join(' | ')})`;
}

function step(c: number, lower: Lower, upper: Upper): { lower: Lower; upper: Upper } | undefined {
  let nextLower: Lower;
  if (lower.kind === 'trivial') nextLower = TRIVIAL;
  else if (lower.kind === 'positive') nextLower = c > 0 ? TRIVIAL : POSITIVE;
  else {
    const d = Number(lower.digits[0]);
    if (c < d) return undefined;
    nextLower = c > d ? TRIVIAL : lowerState(lower.digits.slice(1), lower.strict);
  }
  let nextUpper: Upper;
  if (upper.kind === 'none') nextUpper = NONE;
  else if (upper.kind === 'zero') {
    if (c > 0) return undefined;
    nextUpper = upper;
  } else if (upper.kind === 'never') return undefined;
  else {
    const d = Number(upper.digits[0]);
    if (c > d) return undefined;
    nextUpper = c < d ? NONE : upperState(upper.digits.slice(1), upper.strict);
  }
  return { lower: nextLower, upper: nextUpper };
}

function same(a: Lower | Upper, b: Lower | Upper): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
