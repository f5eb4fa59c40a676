// Prefix-cache keys of one sequence's blocks (docs/decoder-engine.md, "The prefix cache").
// Block k's key hashes block k-1's key with the block's BLOCK_TOKENS token ids, so equal keys
// mean equal tokens from position 0 on, and with them equal KV. Every <image> token has the
// same id, so a block holding image tokens also hashes which rows of which image they take:
// per run of one image in the block, that image's key (its content, request-validation.ts)
// and the run's first row and length.
import { createHash } from 'node:crypto';
import { BLOCK_TOKENS } from './model-runner.js';
import type { EngineImage } from './protocol.js';

export class BlockKeys {
  readonly #keys: string[] = [];
  /** <image> tokens of the prompt before the next block to key. */
  #imageTokensBefore = 0;
  /** The image that the next image token belongs to, and the rows before it. */
  #image = 0;
  #rowsBefore = 0;
  readonly #ids = new Int32Array(BLOCK_TOKENS);

  constructor(
    /** The sequence's tokens, prompt then generated; it may grow between calls. */
    private readonly tokens: readonly number[],
    private readonly promptLength: number,
    private readonly images: readonly EngineImage[],
    private readonly imageTokenId: number,
  ) {}

  /** Key of block k; its tokens must all be known. */
  key(k: number): string {
    while (this.#keys.length <= k) this.#keys.push(this.#next(this.#keys.length));
    return this.#keys[k]!;
  }

  /** Keys of blocks 0 .. n-1. */
  keys(n: number): string[] {
    if (n > 0) this.key(n - 1);
    return this.#keys.slice(0, n);
  }

  #next(k: number): string {
    const from = k * BLOCK_TOKENS;
    if (from + BLOCK_TOKENS > this.tokens.length) {
      throw new RangeError(`block ${k} is not full: the sequence has ${this.tokens.length} tokens`);
    }
    const hash = createHash('sha256');
    hash.update(k === 0 ? 'loupe-kv-block' : this.#keys[k - 1]!);
    for (let i = 0; i < BLOCK_TOKENS; i++) this.#ids[i] = this.tokens[from + i]!;
    hash.update(new Uint8Array(this.#ids.buffer));
    // Runs of image rows: [image, first row, rows].
    let run: [number, number, number] | undefined;
    const end = Math.min(from + BLOCK_TOKENS, this.promptLength);
    for (let p = from; p < end; p++) {
      if (this.tokens[p] !== this.imageTokenId) continue;
      while (this.#imageTokensBefore >= this.#rowsBefore + this.images[this.#image]!.rows) {
        this.#rowsBefore += this.images[this.#image]!.rows;
        this.#image++;
      }
      const row = this.#imageTokensBefore - this.#rowsBefore;
      this.#imageTokensBefore++;
      if (run && run[0] === this.#image && run[1] + run[2] === row) {
        run[2]++;
        continue;
      }
      if (run) this.#hashRun(hash, run);
      run = [this.#image, row, 1];
    }
    if (run) this.#hashRun(hash, run);
    return hash.digest('base64');
  }

  #hashRun(hash: ReturnType<typeof createHash>, [image, row, rows]: [number, number, number]) {
    hash.update(`|image ${this.images[image]!.key} rows ${row}+${rows}`);
  }
}
