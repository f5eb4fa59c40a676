// Token embeddings on the host (docs/model.md §5): the text graph takes inputs_embeds, so the
// rows of `<image>` tokens can be replaced by the vision tower's output before it runs.
import { closeSync, openSync, readSync } from 'node:fs';
import type { Checkpoint } from '../checkpoint/index.js';
import { float16ToFloat32 } from '../convert/index.js';

const EMBED_TOKENS = 'model.text_model.embed_tokens.weight';

/**
 * The `embed_tokens` table [vocab, hidden], read once into memory as float32: an F16 table
 * (a float16 checkpoint) is widened exactly, so embeddings and spliced image rows stay
 * float32 for either graph type (the float16 text graph casts inputs_embeds itself).
 */
export class TokenEmbeddings {
  readonly vocab: number;
  readonly hidden: number;
  readonly #table: Float32Array;

  private constructor(table: Float32Array, vocab: number, hidden: number) {
    this.#table = table;
    this.vocab = vocab;
    this.hidden = hidden;
  }

  static fromTable(table: Float32Array, vocab: number, hidden: number): TokenEmbeddings {
    if (table.length !== vocab * hidden) {
      throw new RangeError(
        `embedding table needs ${vocab}×${hidden} = ${vocab * hidden} floats, got ${table.length}`,
      );
    }
    return new TokenEmbeddings(table, vocab, hidden);
  }

  /** Reads the checkpoint's embedding byte range (one read, no whole-file load). */
  static load(checkpoint: Checkpoint): TokenEmbeddings {
    const location = checkpoint.tensors.get(EMBED_TOKENS);
    if (!location) throw new Error(`checkpoint ${checkpoint.dir} has no tensor ${EMBED_TOKENS}`);
    if (location.dtype !== 'F32' && location.dtype !== 'F16') {
      throw new Error(
        `${EMBED_TOKENS} is ${location.dtype}; host embeddings read float32 or float16 only`,
      );
    }
    const [vocab, hidden] = location.shape as [number, number];
    const bytes = new Uint8Array(location.byteLength);
    const fd = openSync(location.file, 'r');
    try {
      let done = 0;
      while (done < bytes.length) {
        const n = readSync(fd, bytes, done, bytes.length - done, location.offset + done);
        if (n === 0) throw new Error(`${location.file}: ${EMBED_TOKENS} is truncated`);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    const table =
      location.dtype === 'F32'
        ? new Float32Array(bytes.buffer)
        : Float32Array.from(new Uint16Array(bytes.buffer), (bits) => float16ToFloat32(bits));
    return new TokenEmbeddings(table, vocab, hidden);
  }

  /** Embeddings of `ids`, [ids.length, hidden] row-major. */
  embed(ids: ArrayLike<number>): Float32Array {
    const out = new Float32Array(ids.length * this.hidden);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id >= this.vocab) {
        throw new RangeError(`token id at position ${i} must be in [0, ${this.vocab}), got ${id}`);
      }
      out.set(this.#table.subarray(id * this.hidden, (id + 1) * this.hidden), i * this.hidden);
    }
    return out;
  }
}

/**
 * Overwrites, in place, the rows of `embeds` ([ids.length, hidden]) at the positions of
 * `imageTokenId` with the rows of `imageRows` ([n, hidden]), the k-th image token taking row
 * k. The count of image tokens must equal n exactly (docs/model.md §5, G17).
 */
export function spliceImageRows(
  embeds: Float32Array,
  ids: ArrayLike<number>,
  imageRows: Float32Array,
  { imageTokenId, hidden }: { imageTokenId: number; hidden: number },
): void {
  if (embeds.length !== ids.length * hidden) {
    throw new RangeError(
      `embeddings hold ${embeds.length} floats, expected ${ids.length} tokens × ${hidden}`,
    );
  }
  if (imageRows.length % hidden !== 0) {
    throw new RangeError(
      `image rows hold ${imageRows.length} floats, not a multiple of hidden ${hidden}`,
    );
  }
  const rows = imageRows.length / hidden;
  let tokens = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] === imageTokenId) tokens++;
  if (tokens !== rows) {
    throw new Error(
      `the prompt has ${tokens} image tokens (id ${imageTokenId}) but ${rows} image embedding rows were given; they must be equal`,
    );
  }
  let k = 0;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] !== imageTokenId) continue;
    embeds.set(imageRows.subarray(k * hidden, (k + 1) * hidden), i * hidden);
    k++;
  }
}
