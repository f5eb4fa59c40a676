import { describe, expect, it } from 'vitest';
import { spliceImageRows, TokenEmbeddings } from './embeddings.js';

const HIDDEN = 2;
const table = TokenEmbeddings.fromTable(Float32Array.from([0, 0, 1, 1, 2, 2, 3, 3]), 4, HIDDEN);

describe('TokenEmbeddings', () => {
  it('looks up rows by id', () => {
    expect(Array.from(table.embed([3, 1, 3]))).toEqual([3, 3, 1, 1, 3, 3]);
  });

  it('names the position and the range of a bad id', () => {
    expect(() => table.embed([1, 4])).toThrow('token id at position 1 must be in [0, 4), got 4');
  });
});

describe('spliceImageRows', () => {
  it('gives the k-th image token the k-th row and leaves the others', () => {
    const ids = [1, 3, 2, 3];
    const embeds = table.embed(ids);
    spliceImageRows(embeds, ids, Float32Array.from([7, 8, 9, 10]), { imageTokenId: 3, hidden: 2 });
    expect(Array.from(embeds)).toEqual([1, 1, 7, 8, 2, 2, 9, 10]);
  });

  it('fails loudly, with both numbers, when tokens and rows differ', () => {
    const ids = [1, 3, 2, 3];
    expect(() =>
      spliceImageRows(table.embed(ids), ids, Float32Array.from([7, 8]), {
        imageTokenId: 3,
        hidden: 2,
      }),
    ).toThrow('the prompt has 2 image tokens (id 3) but 1 image embedding rows were given');
  });
});
