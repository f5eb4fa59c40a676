// The grammar written for the leaves xgrammar gets wrong, checked string by string against
// their definition with xgrammar's own matcher (no vocabulary needed): patterns against
// JavaScript's RegExp, integer and number ranges against the bounds, string lengths.
import { beforeAll, describe, expect, it } from 'vitest';
import { seededUniform } from '../../model/tiny/tiny-model.js';
import { assembleGrammar, decimal, integerRule, lowerSchema, numberRule } from './lower.js';
import { compilePattern, lengthPattern, PATTERN_LIMITS, PatternError } from './regex.js';
import { FORMAT_PATTERNS } from './schema-subset.js';
import { loadXGrammar, type XGrammar } from './xgrammar.js';

let xg: XGrammar;
beforeAll(async () => {
  xg = await loadXGrammar();
});

/** Whether the EBNF `rules` (root rule `root`) accept each text. */
async function accepts(rules: string, texts: readonly string[]): Promise<boolean[]> {
  const grammar = await xg.Grammar.fromEBNF(rules);
  try {
    const out: boolean[] = [];
    for (const t of texts) out.push(await xg.Testings.isGrammarAcceptString(grammar, t));
    return out;
  } finally {
    grammar.dispose();
  }
}

/** Random strings over `alphabet`, lengths 0..maxLength. */
function randomStrings(
  alphabet: string[],
  count: number,
  maxLength: number,
  seed: number,
): string[] {
  const uniform = seededUniform(seed);
  return Array.from({ length: count }, () => {
    let s = '';
    const n = Math.floor(uniform() * (maxLength + 1));
    for (let i = 0; i < n; i++) s += alphabet[Math.floor(uniform() * alphabet.length)];
    return s;
  });
}

describe('patterns', () => {
  const CASES: Array<{ pattern: string; alphabet: string; examples?: string[] }> = [
    { pattern: '^\\d{5}$', alphabet: '0123456789a', examples: ['12345', '1234', '123456'] },
    { pattern: '^[A-Z]{2}-\\d{3,4}$', alphabet: 'ABz-019', examples: ['AB-123', 'AB-12345'] },
    { pattern: '^(yes|no|maybe)$', alphabet: 'yesnomab', examples: ['yes', 'no', 'maybe', 'ye'] },
    { pattern: 'ab', alphabet: 'abc', examples: ['ab', 'xaby', 'ba'] },
    { pattern: '^a|b$', alphabet: 'abc', examples: ['ac', 'cb', 'ca'] },
    { pattern: '^[^"\\\\]*$', alphabet: 'a"\\\n\té', examples: ['a"', 'x\\', 'é\t'] },
    { pattern: '^"\\\\\\n\\t\\u0001$', alphabet: '"\\\n\t\u0001a', examples: ['"\\\n\t\u0001'] },
    {
      pattern: '^[\\s\\S]{2,3}$',
      alphabet: 'a"\\\n\u00e9\u4e2d\u{1f600}',
      examples: ['ab', '😀😀'],
    },
    { pattern: '^\\w+\\s\\W?$', alphabet: 'a_1 \t-é', examples: ['ab ', 'a\t-'] },
    { pattern: '^[à-ÿ]+$', alphabet: 'àéÿaĀ', examples: ['àé', 'a'] },
    { pattern: '^x*?y+z{0,2}$', alphabet: 'xyz', examples: ['y', 'xxyzz', 'yzzz'] },
    { pattern: '^(?:ab){2,}$', alphabet: 'ab', examples: ['abab', 'ab', 'ababab'] },
    { pattern: '^(?<year>\\d{4})-(?:0[1-9]|1[0-2])$', alphabet: '0129-', examples: ['2024-12'] },
    { pattern: '^\\u{1F600}\\uD83D\\uDE01$', alphabet: '😀😁a', examples: ['😀😁'] },
    { pattern: '^[\\d.-]+$', alphabet: '0.-a', examples: ['1.2-3', 'a'] },
    { pattern: '', alphabet: 'ab"', examples: ['', 'ab'] },
  ];

  for (const { pattern, alphabet, examples = [] } of CASES) {
    it(`/${pattern}/ accepts exactly what RegExp matches`, async () => {
      const regex = new RegExp(pattern, 'u');
      const strings = [...examples, ...randomStrings([...alphabet], 300, 7, pattern.length + 1)];
      const got = await accepts(
        compilePattern(pattern).rules,
        strings.map((s) => JSON.stringify(s)),
      );
      const wrong = strings.filter((s, i) => got[i] !== regex.test(s));
      expect(wrong).toEqual([]);
    });
  }

  it('widens a class that leaves out a few non-ASCII characters (and says so)', async () => {
    const { rules, approximated } = compilePattern('^.$');
    expect(approximated).toBe(true); // `.` leaves out U+2028 and U+2029
    expect(await accepts(rules, ['"a"', '"é"', '"\u2028"', '"\\n"'])).toEqual([
      true,
      true,
      true, // widened
      false,
    ]);
    expect(compilePattern('^[a-z]$').approximated).toBe(false);
  });

  it('refuses what it cannot do, saying what', () => {
    const refused: Array<[string, RegExp]> = [
      ['^(?=a)a$', /lookahead/],
      ['^(?<=a)b$', /lookahead and lookbehind/],
      ['^(a)\\1$', /backreferences/],
      ['\\bword\\b', /word boundaries/],
      ['^\\p{L}+$', /Unicode property/],
      ['a^b', /`\^` and `\$`/],
      ['^a{65}$', /repetition bounds above 64/],
      ['^[一-鿿]$', /outside ASCII/],
      ['^[^\\s\\S]$', /matches no string/],
      ['^(', /not a valid regular expression/],
      ['x'.repeat(PATTERN_LIMITS.maxLength + 1), /longer than/],
      ['^((a{64}){64}){3}$', /copies|rules/],
    ];
    for (const [pattern, message] of refused) {
      expect(() => compilePattern(pattern), pattern).toThrow(PatternError);
      expect(() => compilePattern(pattern), pattern).toThrow(message);
    }
  });

  it('string length bounds count code points, an escape as one', async () => {
    const rules = compilePattern(lengthPattern(2, 3), 'root', { trusted: true }).rules;
    const strings = ['a', 'ab', 'abc', 'abcd', '😀😀', 'a"', '\n\t\u0001', '\\\\\\\\', 'é中😀'];
    const got = await accepts(
      rules,
      strings.map((s) => JSON.stringify(s)),
    );
    expect(got).toEqual(strings.map((s) => [...s].length >= 2 && [...s].length <= 3));
    // Raw control characters are not JSON: never accepted, escaped they are.
    expect(await accepts(rules, ['"a\tb"', '"a\\tb"'])).toEqual([false, true]);
  });

  const FORMAT_EXAMPLES: Record<string, [string[], string[]]> = {
    date: [
      ['2024-02-29', '2023-12-31', '2000-02-29', '0001-01-01'],
      ['2023-02-29', '1900-02-29', '2024-13-01', '2024-04-31', '2024-1-01'],
    ],
    time: [
      ['23:59:60Z', '00:00:00.123+05:30', '12:30:00z'],
      ['24:00:00Z', '12:30:00', '12:30Z'],
    ],
    'date-time': [['2024-06-01T12:00:00Z', '2024-06-01t12:00:00-01:00'], ['2024-06-01 12:00:00Z']],
    duration: [
      ['P1Y2M3DT4H5M6S', 'P3W', 'PT1M', 'P1D', 'P1M1D', 'PT1H1S'.replace('1S', '1M1S')],
      ['P', 'PT', 'P1H', 'P1DT', 'P1Y1D', 'PT1H1S', '1Y'],
    ],
    email: [
      ['a@b.co', 'first.last+tag@sub.example.org', "o'hara@x.io"],
      ['a@', '@b.co', 'a..b@c.d', 'a b@c.d', 'a@-b.co'],
    ],
    hostname: [
      ['example.com', 'a-b.c', 'localhost', 'x1'],
      ['-a.com', 'a-.com', 'a..b', 'a_b.c'],
    ],
    ipv4: [
      ['192.168.0.1', '0.0.0.0', '255.255.255.255'],
      ['256.1.1.1', '1.2.3.04', '1.2.3', '1.2.3.4.5'],
    ],
    ipv6: [
      ['::', '::1', 'fe80::1', '2001:db8::8a2e:370:7334', '1:2:3:4:5:6:7:8', '::ffff:192.0.2.128'],
      ['1::2::3', '12345::', ':::', '1:2:3:4:5:6:7:8:9', '::ffff:192.0.2.256'],
    ],
    uuid: [
      ['123e4567-e89b-12d3-a456-426614174000'],
      ['123e4567e89b12d3a456426614174000', 'g23e4567-e89b-12d3-a456-426614174000'],
    ],
  };
  for (const [format, [good, bad]] of Object.entries(FORMAT_EXAMPLES)) {
    it(`format ${format}: its pattern and its grammar agree on examples`, async () => {
      const pattern = FORMAT_PATTERNS[format]!;
      const regex = new RegExp(pattern, 'u');
      expect(good.map((s) => regex.test(s))).toEqual(good.map(() => true));
      expect(bad.map((s) => regex.test(s))).toEqual(bad.map(() => false));
      const rules = compilePattern(pattern, 'root', { trusted: true }).rules;
      const all = [...good, ...bad];
      expect(
        await accepts(
          rules,
          all.map((s) => JSON.stringify(s)),
        ),
      ).toEqual(all.map((s) => regex.test(s)));
    });
  }
});

describe('integer ranges', () => {
  const RANGES: Array<[number | undefined, number | undefined]> = [
    [0, 120],
    [1, 12],
    [-5, 120],
    [-120, -3],
    [0, 1020],
    [999, 1010],
    [17, 83],
    [undefined, 120],
    [-120, undefined],
    [undefined, -120],
    [120, undefined],
    [0, 0],
    [-1, 1],
  ];
  for (const [lo, hi] of RANGES) {
    it(`[${lo ?? '-∞'}, ${hi ?? '∞'}]: every integer near the bounds, and no other spelling`, async () => {
      const rule = integerRule({
        ...(lo !== undefined ? { min: { value: lo, strict: false } } : {}),
        ...(hi !== undefined ? { max: { value: hi, strict: false } } : {}),
      });
      const values: number[] = [];
      for (const b of [lo ?? hi!, hi ?? lo!])
        for (let v = b - 150; v <= b + 150; v++) values.push(v);
      const got = await accepts(`root ::= ${rule}`, values.map(String));
      const wrong = values.filter(
        (v, i) => got[i] !== ((lo === undefined || v >= lo) && (hi === undefined || v <= hi)),
      );
      expect(wrong).toEqual([]);
      expect(await accepts(`root ::= ${rule}`, ['-0', '007', '+1', '1.0', '1e2', ''])).toEqual([
        false,
        false,
        false,
        false,
        false,
        false,
      ]);
    });
  }

  it('rounds bounds inward and keeps exclusive bounds exclusive', async () => {
    const rule = integerRule({
      min: { value: 0.5, strict: false },
      max: { value: 10, strict: true },
    });
    expect(await accepts(`root ::= ${rule}`, ['0', '1', '9', '10'])).toEqual([
      false,
      true,
      true,
      false,
    ]);
    const safe = integerRule({
      min: { value: -9007199254740991, strict: false },
      max: { value: 9007199254740991, strict: false },
    });
    expect(
      await accepts(`root ::= ${safe}`, [
        '9007199254740991',
        '9007199254740992',
        '-9007199254740991',
        '0',
      ]),
    ).toEqual([true, false, true, true]);
  });
});

describe('number ranges', () => {
  const RANGES: Array<{ min?: [number, boolean]; max?: [number, boolean] }> = [
    { min: [0, false], max: [1, false] },
    { min: [0, true], max: [1, true] },
    { min: [-0.05, false], max: [0.125, false] },
    { min: [-90, false], max: [90, false] },
    { min: [1.5, true] },
    { max: [-2.25, false] },
    { min: [0, false] },
    { min: [-1, true], max: [-0.5, true] },
    { min: [0.1, false], max: [0.1, false] },
    { min: [1e-3, true], max: [2.5e1, false] },
  ];
  for (const range of RANGES) {
    const label = `${range.min ? (range.min[1] ? '(' : '[') + range.min[0] : '(-∞'}, ${range.max ? range.max[0] + (range.max[1] ? ')' : ']') : '∞)'}`;
    it(`${label}: decimals near the bounds`, async () => {
      const rule = numberRule({
        ...(range.min ? { min: { value: range.min[0], strict: range.min[1] } } : {}),
        ...(range.max ? { max: { value: range.max[0], strict: range.max[1] } } : {}),
      });
      const texts = new Set<string>([
        '0',
        '-0',
        '0.0',
        '1',
        '-1',
        '1.5',
        '-0.5',
        '00.5',
        '.5',
        '1.',
        '1e2',
      ]);
      const uniform = seededUniform(label.length);
      const anchors = [range.min?.[0], range.max?.[0], 0].filter(
        (x): x is number => x !== undefined,
      );
      for (const a of anchors) {
        for (let i = 0; i < 150; i++) {
          const digits = Math.floor(uniform() * 5);
          const v = a + (uniform() - 0.5) * 4 * (i < 75 ? 1 : 0.01);
          texts.add(v.toFixed(digits));
          texts.add(String(a));
        }
      }
      const list = [...texts];
      const got = await accepts(`root ::= ${rule}`, list);
      const valid = (t: string) => {
        if (!/^-?(0|[1-9]\d*)(\.\d+)?$/.test(t) || /^-0(\.0+)?$/.test(t)) return false;
        const v = Number(t);
        if (range.min && (range.min[1] ? v <= range.min[0] : v < range.min[0])) return false;
        if (range.max && (range.max[1] ? v >= range.max[0] : v > range.max[0])) return false;
        return true;
      };
      const wrong = list.filter((t, i) => got[i] !== valid(t));
      expect(wrong).toEqual([]);
    });
  }

  it('writes bounds as JavaScript does, exactly', () => {
    expect(decimal(0.1)).toEqual({ int: 0n, frac: '1' });
    expect(decimal(-1e-7)).toEqual({ int: 0n, frac: '0000001' });
    expect(decimal(1e21)).toEqual({ int: 10n ** 21n, frac: '' });
    expect(decimal(123.45)).toEqual({ int: 123n, frac: '45' });
  });
});

describe('lowerSchema', () => {
  it('swaps the leaves for placeholders and assembles a grammar xgrammar takes', async () => {
    const schema = {
      type: 'object',
      properties: {
        n: { type: ['integer', 'null'], minimum: 1, maximum: 3 },
        s: { type: 'string', pattern: '^x+$', description: 'kept' },
        d: { type: 'string', format: 'date' },
        plain: { type: 'string' },
        ref: { $ref: '#/$defs/short' },
      },
      required: ['n', 's', 'd', 'plain', 'ref'],
      additionalProperties: false,
      $defs: { short: { type: 'string', maxLength: 2 } },
    };
    const lowered = lowerSchema(schema, 'abc123');
    expect(lowered.leaves.map((l) => l.marker)).toEqual([
      'loupeabc123m0',
      'loupeabc123m1',
      'loupeabc123m2',
      'loupeabc123m3',
    ]);
    expect(JSON.stringify(lowered.schema)).toContain('"plain":{"type":"string"}');
    expect((lowered.schema as { properties: { n: unknown } }).properties.n).toEqual({
      anyOf: [{ const: 'loupeabc123m1' }, { type: 'null' }],
    });
    const ebnf = await xg.Testings._jsonSchemaToEBNF(
      JSON.stringify(lowered.schema),
      false,
      -1,
      [', ', ': '],
      true,
    );
    const grammar = assembleGrammar(ebnf, lowered.leaves);
    expect(grammar).not.toContain('loupeabc123m');
    const ok = '{"n": 2, "s": "xx", "d": "2024-01-31", "plain": "é", "ref": "ab"}';
    const texts = [
      ok,
      ok.replace('"n": 2', '"n": null'),
      ok.replace('"n": 2', '"n": 4'),
      ok.replace('"xx"', '"xy"'),
      ok.replace('2024-01-31', '2024-02-30'),
      ok.replace('"ab"', '"abc"'),
    ];
    expect(await accepts(grammar, texts)).toEqual([true, true, false, false, false, false]);
    expect(() => assembleGrammar('root ::= "x"', lowered.leaves)).toThrow(/placeholder/);
  });
});
