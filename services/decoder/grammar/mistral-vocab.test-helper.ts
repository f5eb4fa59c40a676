// A Mistral-like tokenizer.json of 32,000 pieces plus Idefics2's three added tokens (32,003,
// idefics2-8b's vocabulary size), for the grammar tests and timings: the real tokenizer is not
// in the repository. Same layout as Mistral's SentencePiece BPE: <unk> <s> </s>, the 256
// byte-fallback pieces <0x00>..<0xFF> at ids 3..258, then pieces with `▁` for a space; the
// same normalizer (prepend `▁`, spaces to `▁`) and decoder (ByteFallback) as the real one.
// The pieces are what matters to a token mask: single characters, `▁`-prefixed words, runs of
// `▁`, digits and digit runs, JSON punctuation runs (`{"`, `":`, `▁"`, `"},`, `\n`), multi-byte
// UTF-8 (é, 中, emoji), and seeded random letter strings to fill the rest.
import { seededUniform } from '../../model/tiny/tiny-model.js';

export const MISTRAL_LIKE_PIECES = 32_000;

export interface TokenizerJson {
  added_tokens: Array<{ id: number; content: string; special: boolean }>;
  normalizer: unknown;
  pre_tokenizer: unknown;
  decoder: unknown;
  model: { type: string; byte_fallback?: boolean; vocab: Record<string, number> };
}

export function mistralLikeTokenizer(seed = 7): TokenizerJson {
  const pieces: string[] = ['<unk>', '<s>', '</s>'];
  for (let b = 0; b < 256; b++) {
    pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  }
  const seen = new Set(pieces);
  const add = (p: string) => {
    if (pieces.length < MISTRAL_LIKE_PIECES && p.length > 0 && !seen.has(p)) {
      seen.add(p);
      pieces.push(p);
    }
  };
  add('▁');
  for (let n = 2; n <= 16; n++) add('▁'.repeat(n));
  for (let c = 0x21; c < 0x7f; c++) add(String.fromCharCode(c));
  for (let c = 0x21; c < 0x7f; c++) add('▁' + String.fromCharCode(c));
  for (const p of ['é', 'è', 'à', 'ü', 'ö', 'ñ', 'ç', '中', '文', '日', '本', '€', '—', '“', '”']) {
    add(p);
    add('▁' + p);
  }
  add('😀');
  for (let d = 0; d < 100; d++) {
    add(String(d));
    add('▁' + String(d));
    add(String(d).padStart(2, '0'));
  }
  for (let d = 0; d < 1000; d += 7) add(String(d).padStart(3, '0'));
  const json = [
    '{"',
    '"}',
    '":',
    '":"',
    '",',
    '","',
    '"]',
    '"],',
    '"},',
    '},',
    '}}',
    ']}',
    '],',
    '[{',
    '{}',
    '[]',
    '":[',
    '":{',
    '▁"',
    '▁{',
    '▁}',
    '▁[',
    '▁]',
    '▁{"',
    '▁["',
    '▁true',
    '▁false',
    '▁null',
    'true',
    'false',
    'null',
    '\\"',
    '\\n',
    '\\\\',
    '\\u',
    '.0',
    '.5',
    '-1',
    '▁-',
    '▁0',
    '▁1',
    'e+',
    'E-',
    ',▁',
    ':▁',
    '",▁"',
    '":▁"',
    '":▁',
    '▁"}',
    '<0x>',
    '▁<',
  ];
  for (const p of json) add(p);
  const words = [
    'the',
    'and',
    'name',
    'type',
    'value',
    'items',
    'date',
    'total',
    'price',
    'amount',
    'receipt',
    'invoice',
    'address',
    'street',
    'city',
    'zip',
    'email',
    'phone',
    'kind',
    'tags',
    'age',
    'count',
    'image',
    'text',
    'title',
    'description',
    'id',
    'color',
    'size',
    'user',
  ];
  for (const w of words) {
    add(w);
    add('▁' + w);
    add('"' + w);
    add('▁"' + w);
    add(w + '"');
    add(w[0]!.toUpperCase() + w.slice(1));
  }
  const uniform = seededUniform(seed);
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  while (pieces.length < MISTRAL_LIKE_PIECES) {
    const length = 1 + Math.floor(uniform() * 9);
    let s = uniform() < 0.6 ? '▁' : '';
    for (let i = 0; i < length; i++) s += letters[Math.floor(uniform() * 26)];
    if (uniform() < 0.05) s = s[0]!.toUpperCase() + s.slice(1);
    add(s);
  }
  const vocab: Record<string, number> = {};
  pieces.forEach((p, i) => (vocab[p] = i));
  const special = (id: number, content: string) => ({ id, content, special: true });
  return {
    added_tokens: [
      special(0, '<unk>'),
      special(1, '<s>'),
      special(2, '</s>'),
      special(32_000, '<fake_token_around_image>'),
      special(32_001, '<image>'),
      special(32_002, '<end_of_utterance>'),
    ],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: { type: 'BPE', byte_fallback: true, vocab },
  };
}
