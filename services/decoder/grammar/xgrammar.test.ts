// The loader's shim and the wrappers over xgrammar 0.1.27's calls.
import { describe, expect, it } from 'vitest';
import { tokenizerVocabulary } from './constraint.js';
import { tinyTokenizer } from './grammar.test-helper.js';
import { mistralLikeTokenizer } from './mistral-vocab.test-helper.js';
import { fillNextTokenBitmask, loadXGrammar } from './xgrammar.js';

describe('loadXGrammar', () => {
  it('loads once and leaves no CommonJS globals behind', async () => {
    const global = globalThis as Record<string, unknown>;
    const before = ['require', '__filename', '__dirname', 'xgrammar'].map((k) => k in global);
    const [a, b] = await Promise.all([loadXGrammar(), loadXGrammar()]);
    expect(a).toBe(b);
    expect(typeof a.GrammarCompiler.createGrammarCompiler).toBe('function');
    expect(['require', '__filename', '__dirname', 'xgrammar'].map((k) => k in global)).toEqual(
      before,
    );
    // And it keeps working without them.
    const grammar = await a.Grammar.fromEBNF('root ::= "a" [0-9]+');
    expect(await a.Testings.isGrammarAcceptString(grammar, 'a12')).toBe(true);
    expect(await a.Testings.isGrammarAcceptString(grammar, 'b12')).toBe(false);
    grammar.dispose();
  });

  it('fillNextTokenBitmask gives what the matcher allows, accept and rollBack follow tokens', async () => {
    const xg = await loadXGrammar();
    const { encoded } = tokenizerVocabulary(tinyTokenizer());
    const info = await xg.TokenizerInfo.createTokenizerInfo(
      encoded,
      'byte_fallback',
      true,
      512,
      [2],
    );
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
    const compiled = await compiler.compileGrammar('root ::= "a" [0-9]');
    const matcher = await xg.GrammarMatcher.createGrammarMatcher(compiled);
    await expect(fillNextTokenBitmask(matcher, new Int32Array(3))).rejects.toThrow(/words/);
    const bits = new Uint32Array(16);
    await fillNextTokenBitmask(matcher, bits);
    const allowed = (id: number) => ((bits[id >>> 5]! >>> (id & 31)) & 1) === 1;
    const ids = encoded.flatMap((piece, id) => (allowed(id) ? [piece] : []));
    expect(ids).toEqual(['<0x61>', 'a']);
    expect(matcher.acceptToken(encoded.indexOf('a'))).toBe(true);
    expect(matcher.acceptToken(encoded.indexOf('b'))).toBe(false);
    matcher.rollBack(1);
    expect(matcher.acceptToken(encoded.indexOf('<0x61>'))).toBe(true);
    expect(matcher.acceptToken(encoded.indexOf('5'))).toBe(true);
    await fillNextTokenBitmask(matcher, bits);
    // Complete: only the stop token (id 2, '</s>', blank in the vocabulary as special).
    expect(encoded.flatMap((_, id) => (allowed(id) ? [id] : []))).toEqual([2]);
    expect(matcher.acceptToken(2)).toBe(true);
    expect(matcher.isTerminated()).toBe(true);
    // xgrammar aborts when asked for the mask of a terminated matcher: Constraint never asks.
    matcher.dispose();
    compiled.dispose();
    compiler.dispose();
    info.dispose();
  });

  it('byte_fallback reads `▁` as a space and <0x0A> as a newline; the prefix-space flag changes no mask', async () => {
    // xgrammar's built-in JSON grammar (free whitespace), a 32k Mistral-like vocabulary.
    const xg = await loadXGrammar();
    const { encoded } = tokenizerVocabulary(mistralLikeTokenizer() as never);
    const id = (piece: string) => encoded.indexOf(piece);
    const masks = async (vocabType: string, prependSpace: boolean) => {
      const info = await xg.TokenizerInfo.createTokenizerInfo(
        encoded,
        vocabType,
        prependSpace,
        32_003,
        [2],
      );
      const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
      const compiled = await compiler.compileBuiltinJSONGrammar();
      const matcher = await xg.GrammarMatcher.createGrammarMatcher(compiled);
      const out: Int32Array[] = [];
      const bits = new Int32Array(Math.ceil(32_003 / 32));
      for (const text of ['', '{', '"a":']) {
        if (text) matcher._acceptString(text);
        await fillNextTokenBitmask(matcher, bits);
        out.push(bits.slice());
      }
      matcher.dispose();
      compiled.dispose();
      compiler.dispose();
      info.dispose();
      return out;
    };
    const allowed = (bits: Int32Array, piece: string) =>
      ((bits[id(piece) >>> 5]! >>> (id(piece) & 31)) & 1) === 1;
    const [start, afterBrace, afterColon] = await masks('byte_fallback', true);
    expect(['{', '<0x7B>', '▁{', '"'].map((p) => allowed(start!, p))).toEqual([
      true,
      true,
      false,
      false,
    ]);
    for (const p of ['"', '▁"', '<0x22>', '<0x0A>', '▁', '▁▁', '"name'])
      expect(allowed(afterBrace!, p), p).toBe(true);
    for (const p of ['1', '▁1', '42', '<0x0A>', '▁"', '"', 'true', '▁true'])
      expect(allowed(afterColon!, p), p).toBe(true);
    // The prefix-space flag is metadata in 0.1.27: the same masks either way.
    expect(await masks('byte_fallback', false)).toEqual([start, afterBrace, afterColon]);
    // Read as raw, `▁"` and <0x0A> would be literal text, never JSON.
    const [, rawBrace] = await masks('raw', true);
    expect(['"', '▁"', '<0x0A>', '▁'].map((p) => allowed(rawBrace!, p))).toEqual([
      true,
      false,
      false,
      false,
    ]);
  });
});
