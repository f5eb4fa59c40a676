import { describe, expect, it } from 'vitest';
import { loadTokenizer } from '../model/index.js';
import { IncrementalDetokenizer } from './detokenizer.js';

const tokenizer = loadTokenizer(
  new URL('../../test/fixtures/text/tokenizer/', import.meta.url).pathname,
);

function stream(text: string, stop: string[] = []) {
  const ids = tokenizer.encode(text, { addSpecialTokens: false });
  const d = new IncrementalDetokenizer(tokenizer, stop);
  const pieces = ids.map((id) => d.push(id));
  pieces.push(d.finish());
  return { pieces, joined: pieces.join(''), stopped: d.stopped };
}

describe('IncrementalDetokenizer', () => {
  it('streams pieces that join to the whole decode and never split a character', () => {
    const text = 'Café au lait ☕ and 東京 🚀 done.';
    const { pieces, joined } = stream(text);
    expect(joined).toBe(
      tokenizer.decode(tokenizer.encode(text, { addSpecialTokens: false }), {
        skipSpecialTokens: true,
      }),
    );
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
  });

  it('joins to the whole decode of a long mixed text, with either tokenizer', () => {
    const words = [
      'The',
      'quick',
      'brown',
      'fox',
      'Café',
      '☕',
      '東京',
      '🚀',
      'naïve',
      '—',
      'done.',
      '\n',
      '42',
      'jumps',
    ];
    let seed = 7;
    const text = Array.from({ length: 400 }, () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return words[seed % words.length];
    }).join(' ');
    for (const dir of ['tokenizer', 'tokenizer-metaspace']) {
      const t = loadTokenizer(
        new URL(`../../test/fixtures/text/${dir}/`, import.meta.url).pathname,
      );
      const ids = t.encode(text, { addSpecialTokens: false });
      const d = new IncrementalDetokenizer(t);
      const pieces = ids.map((id) => d.push(id));
      pieces.push(d.finish());
      expect(pieces.join(''), dir).toBe(t.decode(ids, { skipSpecialTokens: true }));
      for (const p of pieces) expect(p).not.toContain('\uFFFD');
    }
  });

  it('ends at a stop string, without it and without what follows', () => {
    const { joined, stopped } = stream('The answer is 42. STOP and then more text', ['STOP']);
    expect(stopped).toBe(true);
    expect(joined).toBe('The answer is 42. ');
  });

  it('stops at the earliest stop string, whatever their order in the list', () => {
    const { joined, stopped } = stream('one two. three\nfour', ['\n', '.']);
    expect(stopped).toBe(true);
    expect(joined).toBe('one two');
  });

  it('holds back a possible stop prefix and releases it when it is not one', () => {
    const { joined, stopped } = stream('alpha STAR beta', ['STOP']);
    expect(stopped).toBe(false);
    expect(joined).toBe(
      tokenizer.decode(tokenizer.encode('alpha STAR beta', { addSpecialTokens: false })),
    );
  });

  it('does not show special tokens', () => {
    const d = new IncrementalDetokenizer(tokenizer);
    const eos = tokenizer.tokenToId('</s>')!;
    const ids = [...tokenizer.encode('Hello', { addSpecialTokens: false }), eos];
    expect(ids.map((id) => d.push(id)).join('') + d.finish()).toBe('Hello');
  });
});
