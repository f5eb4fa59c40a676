// JSON Schema `pattern`s (ECMAScript regular expressions, `u` mode) turned into grammar rules
// over the JSON text of a string: the pattern constrains the decoded value, the model writes it
// JSON-escaped, so each character class becomes the JSON spellings of its characters (`"` as
// `\"`, a tab as `\t`, ...). Pure: schema-subset.ts (also imported by the gateway) uses
// `compilePattern` to refuse what this cannot do. See docs/structured-output.md, "Patterns".
//
// Why not xgrammar's own pattern support: it matches the regex against the raw JSON text
// (`.` or `[^x]` admit a bare `"` or a raw tab, which ends or breaks the string), and its
// character classes mishandle ranges outside ASCII. The grammar written here uses only what
// xgrammar does right: ASCII classes, negated ASCII classes (which admit every non-ASCII
// character) and single non-ASCII characters.

/** A pattern this module cannot turn into a grammar, with the reason. */
export class PatternError extends Error {
  override readonly name = 'PatternError';
}

/** Bounds on what a pattern may make (grammar size and compile time). */
export const PATTERN_LIMITS = {
  /** Longest pattern, in UTF-16 units. */
  maxLength: 1000,
  /** Largest `{n,m}` bound (each copy is a grammar rule: see Rules). */
  maxRepeat: 64,
  /** Largest product of nested repetition bounds (each `{n,m}` copies its operand). */
  maxExpansion: 10_000,
  /** Most grammar rules one pattern may make (at most about one per character position). */
  maxRules: 512,
  /** Characters outside ASCII a class may list one by one. */
  maxListedNonAscii: 1024,
  /** A class missing at most this many non-ASCII characters admits all of them (see above). */
  maxApproximated: 64,
} as const;

const MAX_CODE_POINT = 0x10ffff;
const SURROGATES: Range = [0xd800, 0xdfff];

/** Inclusive code point range. */
type Range = [number, number];

/** A set of code points: sorted, disjoint, non-adjacent inclusive ranges. */
export class CharSet {
  private constructor(readonly ranges: readonly Range[]) {}

  static of(...ranges: Range[]): CharSet {
    return CharSet.normalized(ranges);
  }

  static char(c: number): CharSet {
    return new CharSet([[c, c]]);
  }

  private static normalized(ranges: Range[]): CharSet {
    const sorted = ranges.filter(([a, b]) => a <= b).sort((x, y) => x[0] - y[0]);
    const out: Range[] = [];
    for (const [a, b] of sorted) {
      const last = out[out.length - 1];
      if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
      else out.push([a, b]);
    }
    return new CharSet(out);
  }

  union(other: CharSet): CharSet {
    return CharSet.normalized([...this.ranges, ...other.ranges].map(([a, b]) => [a, b]));
  }

  complement(): CharSet {
    const out: Range[] = [];
    let next = 0;
    for (const [a, b] of this.ranges) {
      if (a > next) out.push([next, a - 1]);
      next = b + 1;
    }
    if (next <= MAX_CODE_POINT) out.push([next, MAX_CODE_POINT]);
    return new CharSet(out);
  }

  intersect(other: CharSet): CharSet {
    return this.complement().union(other.complement()).complement();
  }

  minus(other: CharSet): CharSet {
    return this.intersect(other.complement());
  }

  get size(): number {
    return this.ranges.reduce((n, [a, b]) => n + b - a + 1, 0);
  }

  get isEmpty(): boolean {
    return this.ranges.length === 0;
  }

  has(c: number): boolean {
    return this.ranges.some(([a, b]) => a <= c && c <= b);
  }

  *codePoints(): Generator<number> {
    for (const [a, b] of this.ranges) for (let c = a; c <= b; c++) yield c;
  }
}

const range = (a: string, b: string): Range => [a.codePointAt(0)!, b.codePointAt(0)!];
const DIGIT = CharSet.of(range('0', '9'));
const WORD = CharSet.of(range('a', 'z'), range('A', 'Z'), range('0', '9'), range('_', '_'));
// ECMAScript WhiteSpace and LineTerminator.
const SPACE = CharSet.of(
  [0x09, 0x0d],
  [0x20, 0x20],
  [0xa0, 0xa0],
  [0x1680, 0x1680],
  [0x2000, 0x200a],
  [0x2028, 0x2029],
  [0x202f, 0x202f],
  [0x205f, 0x205f],
  [0x3000, 0x3000],
  [0xfeff, 0xfeff],
);
const LINE_TERMINATORS = CharSet.of([0x0a, 0x0a], [0x0d, 0x0d], [0x2028, 0x2029]);
/** Every character a JSON string may hold (all of Unicode but lone surrogates). */
export const ANY_CHAR = CharSet.of([0, MAX_CODE_POINT]).minus(CharSet.of(SURROGATES));

/** A parsed pattern. */
export type Node =
  | { kind: 'set'; set: CharSet }
  | { kind: 'seq'; items: Node[] }
  | { kind: 'alt'; options: Node[] }
  | { kind: 'repeat'; node: Node; min: number; max: number } // max: Infinity for unbounded
  | { kind: 'anchor'; at: 'start' | 'end' };

class Parser {
  at = 0;
  constructor(readonly source: string) {}

  fail(what: string): never {
    throw new PatternError(what);
  }

  peek(offset = 0): string | undefined {
    return this.source[this.at + offset];
  }

  eat(s: string): boolean {
    if (this.source.startsWith(s, this.at)) {
      this.at += s.length;
      return true;
    }
    return false;
  }

  alternation(): Node {
    const options = [this.sequence()];
    while (this.eat('|')) options.push(this.sequence());
    return options.length === 1 ? options[0]! : { kind: 'alt', options };
  }

  sequence(): Node {
    const items: Node[] = [];
    while (this.at < this.source.length && this.peek() !== '|' && this.peek() !== ')') {
      items.push(this.quantified());
    }
    return { kind: 'seq', items };
  }

  quantified(): Node {
    const atom = this.atom();
    const q = this.quantifier();
    if (!q) return atom;
    if (atom.kind === 'anchor') this.fail('a quantified anchor (`^` or `$`) is not supported');
    this.eat('?'); // lazy: same language
    return { kind: 'repeat', node: atom, min: q.min, max: q.max };
  }

  quantifier(): { min: number; max: number } | undefined {
    if (this.eat('*')) return { min: 0, max: Infinity };
    if (this.eat('+')) return { min: 1, max: Infinity };
    if (this.eat('?')) return { min: 0, max: 1 };
    const m = /^\{(\d+)(,(\d*))?\}/.exec(this.source.slice(this.at));
    if (!m) return undefined;
    this.at += m[0].length;
    const min = Number(m[1]);
    const max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
    const limit = PATTERN_LIMITS.maxRepeat;
    if (min > limit || (max !== Infinity && max > limit)) {
      this.fail(`repetition bounds above ${limit} (\`${m[0]}\`) are not supported`);
    }
    return { min, max };
  }

  atom(): Node {
    const c = this.peek()!;
    if (this.eat('^')) return { kind: 'anchor', at: 'start' };
    if (this.eat('$')) return { kind: 'anchor', at: 'end' };
    if (this.eat('(')) {
      if (this.eat('?=') || this.eat('?!') || this.eat('?<=') || this.eat('?<!')) {
        this.fail('lookahead and lookbehind assertions are not supported');
      }
      if (this.eat('?:')) {
        // non-capturing
      } else if (this.eat('?<')) {
        const end = this.source.indexOf('>', this.at);
        this.at = end + 1;
      } else if (this.peek() === '?') {
        this.fail('this group syntax is not supported');
      }
      const inner = this.alternation();
      if (!this.eat(')')) this.fail('unbalanced parenthesis');
      return inner;
    }
    if (this.eat('[')) return { kind: 'set', set: this.characterClass() };
    if (this.eat('.')) return { kind: 'set', set: ANY_CHAR.minus(LINE_TERMINATORS) };
    if (this.eat('\\')) return { kind: 'set', set: this.escape(false) };
    if (c === ')' || c === '*' || c === '+' || c === '?' || c === '{')
      this.fail(`unexpected \`${c}\``);
    const cp = this.source.codePointAt(this.at)!;
    this.at += cp > 0xffff ? 2 : 1;
    return { kind: 'set', set: CharSet.char(cp) };
  }

  characterClass(): CharSet {
    const negated = this.eat('^');
    let set = CharSet.of();
    while (!this.eat(']')) {
      if (this.at >= this.source.length) this.fail('unterminated character class');
      const low = this.classAtom();
      if (this.peek() === '-' && this.peek(1) !== ']' && this.peek(1) !== undefined) {
        this.at++;
        const high = this.classAtom();
        const a = single(low);
        const b = single(high);
        if (a === undefined || b === undefined || a > b) this.fail('invalid class range');
        set = set.union(CharSet.of([a, b]));
      } else {
        set = set.union(low);
      }
    }
    return negated ? ANY_CHAR.minus(set) : set;
  }

  classAtom(): CharSet {
    if (this.eat('\\')) return this.escape(true);
    const cp = this.source.codePointAt(this.at)!;
    this.at += cp > 0xffff ? 2 : 1;
    return CharSet.char(cp);
  }

  escape(inClass: boolean): CharSet {
    const c = this.peek();
    if (c === undefined) this.fail('a trailing backslash');
    this.at++;
    switch (c) {
      case 'd':
        return DIGIT;
      case 'D':
        return ANY_CHAR.minus(DIGIT);
      case 'w':
        return WORD;
      case 'W':
        return ANY_CHAR.minus(WORD);
      case 's':
        return SPACE;
      case 'S':
        return ANY_CHAR.minus(SPACE);
      case 't':
        return CharSet.char(0x09);
      case 'n':
        return CharSet.char(0x0a);
      case 'v':
        return CharSet.char(0x0b);
      case 'f':
        return CharSet.char(0x0c);
      case 'r':
        return CharSet.char(0x0d);
      case '0':
        return CharSet.char(0);
      case 'b':
        if (inClass) return CharSet.char(0x08);
        return this.fail('word boundaries (`\\b`, `\\B`) are not supported');
      case 'B':
        return this.fail('word boundaries (`\\b`, `\\B`) are not supported');
      case 'p':
      case 'P':
        return this.fail('Unicode property escapes (`\\p{...}`) are not supported');
      case 'k':
        return this.fail('backreferences are not supported');
      case 'c': {
        const letter = this.peek()!;
        this.at++;
        return CharSet.char(letter.charCodeAt(0) % 32);
      }
      case 'x': {
        const hex = this.source.slice(this.at, this.at + 2);
        this.at += 2;
        return CharSet.char(parseInt(hex, 16));
      }
      case 'u': {
        if (this.eat('{')) {
          const end = this.source.indexOf('}', this.at);
          const cp = parseInt(this.source.slice(this.at, end), 16);
          this.at = end + 1;
          return CharSet.char(cp);
        }
        const high = parseInt(this.source.slice(this.at, this.at + 4), 16);
        this.at += 4;
        if (high >= 0xd800 && high <= 0xdbff && this.source.startsWith('\\u', this.at)) {
          const low = parseInt(this.source.slice(this.at + 2, this.at + 6), 16);
          if (low >= 0xdc00 && low <= 0xdfff) {
            this.at += 6;
            return CharSet.char(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00));
          }
        }
        return CharSet.char(high);
      }
      default:
        if (c >= '1' && c <= '9') this.fail('backreferences are not supported');
        // An identity escape (`\.`, `\-`, `\/`, ...); `u` mode allows only syntax characters.
        return CharSet.char(c.codePointAt(0)!);
    }
  }
}

function single(set: CharSet): number | undefined {
  const r = set.ranges;
  return r.length === 1 && r[0]![0] === r[0]![1] ? r[0]![0] : undefined;
}

/** One top-level alternative of a pattern with its anchors taken off. */
interface Branch {
  node: Node;
  start: boolean;
  end: boolean;
}

/**
 * Parses `pattern` (throws PatternError for what is invalid or not supported). `trusted`
 * (Loupe's own format patterns) skips the size limits.
 */
export function parsePattern(pattern: string, trusted = false): Branch[] {
  if (!trusted && pattern.length > PATTERN_LIMITS.maxLength) {
    throw new PatternError(`patterns longer than ${PATTERN_LIMITS.maxLength} are not supported`);
  }
  try {
    new RegExp(pattern, 'u');
  } catch (error) {
    throw new PatternError(
      `not a valid regular expression (ECMAScript, u mode): ${(error as Error).message}`,
    );
  }
  const parser = new Parser(pattern);
  const top = parser.alternation();
  if (parser.at !== pattern.length) parser.fail('unbalanced parenthesis');
  const options = top.kind === 'alt' ? top.options : [top];
  return options.map((option) => {
    const items = option.kind === 'seq' ? [...option.items] : [option];
    const start = items[0]?.kind === 'anchor' && items[0].at === 'start';
    if (start) items.shift();
    const last = items[items.length - 1];
    const end = last?.kind === 'anchor' && last.at === 'end';
    if (end) items.pop();
    checkNoAnchors(items);
    if (!trusted) checkExpansion(items, 1);
    return { node: { kind: 'seq', items }, start, end };
  });
}

function checkNoAnchors(nodes: Node[]): void {
  for (const node of nodes) {
    if (node.kind === 'anchor') {
      throw new PatternError(
        '`^` and `$` are supported only at the start and end of the pattern (or of a top-level alternative)',
      );
    }
    if (node.kind === 'seq') checkNoAnchors(node.items);
    if (node.kind === 'alt') checkNoAnchors(node.options);
    if (node.kind === 'repeat') checkNoAnchors([node.node]);
  }
}

function checkExpansion(nodes: Node[], factor: number): void {
  for (const node of nodes) {
    if (node.kind === 'seq') checkExpansion(node.items, factor);
    if (node.kind === 'alt') checkExpansion(node.options, factor);
    if (node.kind === 'repeat') {
      const copies = factor * Math.max(1, node.min, node.max === Infinity ? 0 : node.max);
      if (copies > PATTERN_LIMITS.maxExpansion) {
        throw new PatternError(
          `nested repetitions expand to more than ${PATTERN_LIMITS.maxExpansion} copies`,
        );
      }
      checkExpansion([node.node], copies);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Grammar (xgrammar EBNF) for the JSON spelling of a pattern's strings.

const hex4 = (c: number) => c.toString(16).padStart(4, '0');
/** A code point inside an EBNF string literal or class: plain when safe, else \u / \U. */
function ebnfChar(c: number): string {
  if ((c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)) {
    return String.fromCodePoint(c);
  }
  return c > 0xffff ? `\\U${c.toString(16).padStart(8, '0')}` : `\\u${hex4(c)}`;
}

const SHORT_ESCAPES = new Map([
  [0x08, 'b'],
  [0x09, 't'],
  [0x0a, 'n'],
  [0x0c, 'f'],
  [0x0d, 'r'],
]);

/** What emitting a pattern noted: whether some class was widened (see charSetRule). */
export interface EmitNotes {
  approximated: boolean;
}

const ASCII_PRINTABLE = CharSet.of([0x20, 0x7f]).minus(CharSet.of([0x22, 0x22], [0x5c, 0x5c]));
const NON_ASCII = CharSet.of([0x80, MAX_CODE_POINT]).minus(CharSet.of(SURROGATES));
const CONTROL = CharSet.of([0x00, 0x1f]);

/**
 * The EBNF alternatives for one character of `set` as written inside a JSON string (empty when
 * the set is). Printable ASCII is written as is (but `"` and `\`, escaped); control characters
 * as their JSON escapes; characters outside ASCII as themselves: all of them through a negated
 * ASCII class when the set holds all (or all but at most PATTERN_LIMITS.maxApproximated: that
 * class cannot leave any out, so such a set is widened and `notes.approximated` set), else
 * listed one by one (up to PATTERN_LIMITS.maxListedNonAscii).
 */
export function charSetOptions(set: CharSet, notes: EmitNotes): string[] {
  const options: string[] = [];
  const ascii = set.intersect(ASCII_PRINTABLE);
  if (!ascii.isEmpty) {
    options.push(
      '[' +
        ascii.ranges
          .map(([a, b]) => (a === b ? ebnfChar(a) : `${ebnfChar(a)}-${ebnfChar(b)}`))
          .join('') +
        ']',
    );
  }
  if (set.has(0x22)) options.push('"\\\\\\""');
  if (set.has(0x5c)) options.push('"\\\\\\\\"');
  const controls = set.intersect(CONTROL);
  if (controls.size === 32) {
    options.push('"\\\\u00" [01] [0-9a-fA-F]', '"\\\\" [bfnrt]');
  } else {
    for (const c of controls.codePoints()) {
      const short = SHORT_ESCAPES.get(c);
      options.push(short ? `"\\\\${short}"` : `"\\\\u${hex4(c)}"`);
    }
  }
  const wide = set.intersect(NON_ASCII);
  const missing = NON_ASCII.size - wide.size;
  if (!wide.isEmpty) {
    if (missing <= PATTERN_LIMITS.maxApproximated) {
      if (missing > 0) notes.approximated = true;
      options.push('[^\\u0000-\\u007f]');
    } else if (wide.size <= PATTERN_LIMITS.maxListedNonAscii) {
      for (const c of wide.codePoints()) options.push(`"${ebnfChar(c)}"`);
    } else {
      throw new PatternError(
        `a character class with ${wide.size} characters outside ASCII is not supported (at most ${PATTERN_LIMITS.maxListedNonAscii}, or all of them)`,
      );
    }
  }
  return options;
}

/** charSetOptions as one EBNF expression, or undefined when the set is empty. */
export function charSetRule(set: CharSet, notes: EmitNotes): string | undefined {
  const options = charSetOptions(set, notes);
  if (options.length === 0) return undefined;
  return options.length === 1 ? options[0] : `(${options.join(' | ')})`;
}

/**
 * Builds a pattern's grammar as a right-linear one: every rule ends with the rule for what
 * follows it, up to the string's closing quote ("continuation passing"), as xgrammar's own
 * string rule does. Then each rule sees the rest of the string, and xgrammar can tell at
 * compile time which tokens fit at each point. The other shape, a rule for the repeated part
 * and a count (`x{m,n}`), compiles fast but leaves every token longer than one character to
 * be checked at run time: 5 to 20 ms per token at a 32k vocabulary for `[a-z]{3,12}` or
 * `.{0,20}`, against tens of microseconds here. The price is a rule per repetition copy,
 * compiled once per schema (docs/structured-output.md, "Costs").
 */
class Rules {
  readonly lines: string[] = [];
  count = 0;
  constructor(
    readonly prefix: string,
    readonly notes: EmitNotes,
    readonly limit: number,
  ) {}

  reserve(): string {
    if (++this.count > this.limit) {
      throw new PatternError(
        `the pattern needs more than ${this.limit} grammar rules (long repetitions such as \`{0,500}\` make one per copy)`,
      );
    }
    return `${this.prefix}_${this.count - 1}`;
  }

  define(name: string, options: readonly string[]): string {
    this.lines.push(`${name} ::= ${options.join(' | ')}`);
    return name;
  }

  rule(options: readonly string[]): string {
    return this.define(this.reserve(), options);
  }

  /**
   * What comes before a continuation: one alternative is written out in place (a sequence, no
   * rule needed), several get a rule (else the continuation would be copied into each).
   */
  join(options: readonly string[]): string {
    return options.length === 1 ? options[0]! : this.rule(options);
  }
}

/**
 * The alternatives of a grammar matching `node` and then `next` (a rule name or a literal);
 * [] when `node` matches nothing.
 */
function follow(node: Node, next: string, rules: Rules): string[] {
  switch (node.kind) {
    case 'set':
      return charSetOptions(node.set, rules.notes).map((o) => `${o} ${next}`);
    case 'seq': {
      if (node.items.length === 0) return [next];
      let cont = next;
      for (let i = node.items.length - 1; i >= 0; i--) {
        const options = follow(node.items[i]!, cont, rules);
        if (options.length === 0) return [];
        if (i === 0) return options;
        cont = rules.join(options);
      }
      return [next];
    }
    case 'alt':
      return node.options.flatMap((o) => follow(o, next, rules));
    case 'repeat': {
      const { min, max } = node;
      let cont = next;
      if (max === Infinity) {
        // loop ::= x loop | next
        const loop = rules.reserve();
        rules.define(loop, [...follow(node.node, loop, rules), next]);
        cont = loop;
      } else {
        // optional copies, innermost first: opt_i ::= x opt_(i-1) | next
        for (let i = 0; i < max - min; i++) {
          const options = follow(node.node, cont, rules);
          if (options.length === 0) break;
          cont = rules.rule([...options, next]);
        }
      }
      for (let i = 0; i < min; i++) {
        const options = follow(node.node, cont, rules);
        if (options.length === 0) return [];
        if (i === min - 1) return options;
        cont = rules.join(options);
      }
      return [cont];
    }
    case 'anchor':
      throw new PatternError('misplaced anchor');
  }
}

/** A pattern as grammar rules: `root` names the rule for the whole JSON string, quotes included. */
export interface PatternGrammar {
  /** EBNF rules, one per line, the first named as asked. */
  rules: string;
  /** How many (each costs compile time: docs/structured-output.md, "Costs"). */
  ruleCount: number;
  approximated: boolean;
}

/** The pattern of a JSON Schema string length bound: any characters, min to max of them. */
export function lengthPattern(min: number, max: number | undefined): string {
  return `^[\\s\\S]{${min},${max ?? ''}}$`;
}

/**
 * The grammar of the JSON strings (quotes included) whose value matches `pattern` (ECMAScript
 * `u` semantics: unanchored unless the pattern begins with `^` / ends with `$`), as rules named
 * `${name}` and `${name}_<n>`. Throws PatternError.
 */
export function compilePattern(
  pattern: string,
  name = 'root',
  { trusted = false }: { trusted?: boolean } = {},
): PatternGrammar {
  const branches = parsePattern(pattern, trusted);
  const rules = new Rules(name, { approximated: false }, PATTERN_LIMITS.maxRules);
  const any = charSetOptions(ANY_CHAR, rules.notes);
  const close = '"\\""';
  let tail: string | undefined;
  const options: string[] = [];
  for (const branch of branches) {
    let next = close;
    if (!branch.end) {
      // ... then anything: tail ::= any tail | "\""
      if (tail === undefined) {
        tail = rules.reserve();
        rules.define(tail, [...any.map((o) => `${o} ${tail}`), close]);
      }
      next = tail;
    }
    const body = follow(branch.node, next, rules);
    if (body.length === 0) continue;
    if (branch.start) {
      options.push(...body);
    } else {
      // anything, then the pattern: head ::= any head | body
      const head = rules.reserve();
      rules.define(head, [...any.map((o) => `${o} ${head}`), ...body]);
      options.push(head);
    }
  }
  if (options.length === 0) throw new PatternError('the pattern matches no string');
  const lines = [
    `${name} ::= "\\"" ${options.length === 1 ? options[0] : `(${options.join(' | ')})`}`,
  ];
  return {
    rules: [...lines, ...rules.lines].join('\n'),
    ruleCount: 1 + rules.lines.length,
    approximated: rules.notes.approximated,
  };
}
