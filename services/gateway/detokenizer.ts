// Turning a stream of token ids into a stream of text: special tokens are not shown, a
// UTF-8 character split across tokens is held back until it is whole, and stop strings end
// the text (they are not shown, and neither is anything after them). Text that could still
// turn out to be the start of a stop string is held back until it cannot.
//
// Each token costs a decode of a short window, not of the whole answer: the window starts at
// the previous chunk's first token, so the tokenizer sees the same leading context both times
// (the prefix offset of vLLM's incremental detokenizer), and only the difference is new text.
import type { TextTokenizer } from '../model/index.js';

export class IncrementalDetokenizer {
  readonly #ids: number[] = [];
  /** The text decoded so far (complete characters only). */
  #text = '';
  /** Token indices: the window decoded for context starts at prefix, new tokens at read. */
  #prefixOffset = 0;
  #readOffset = 0;
  /** Characters of #text already handed out. */
  #emitted = 0;
  #stopped = false;

  constructor(
    private readonly tokenizer: TextTokenizer,
    private readonly stop: readonly string[] = [],
  ) {}

  get stopped(): boolean {
    return this.#stopped;
  }

  /** Adds a token; returns the text that may be shown now ('' while held back). */
  push(id: number): string {
    if (this.#stopped) return '';
    this.#ids.push(id);
    return this.#take(false);
  }

  /** The end of the stream: whatever was held back and is not a stop string. */
  finish(): string {
    return this.#stopped ? '' : this.#take(true);
  }

  /** Appends the new tokens' text to #text, unless it ends inside a character (then waits). */
  #decodeNew(final: boolean): void {
    const decode = (from: number, to?: number) =>
      this.tokenizer.decode(this.#ids.slice(from, to), { skipSpecialTokens: true });
    const prefix = decode(this.#prefixOffset, this.#readOffset);
    const window = decode(this.#prefixOffset);
    // An incomplete UTF-8 sequence decodes to U+FFFD at the end; wait for the rest.
    if (window.length <= prefix.length || (!final && window.endsWith('\uFFFD'))) return;
    this.#text += window.slice(prefix.length);
    // Move the window's start only to a clean character boundary: invalid bytes in the
    // previous chunk (U+FFFD) may still combine with the bytes after them.
    if (!prefix.includes('\uFFFD')) this.#prefixOffset = this.#readOffset;
    this.#readOffset = this.#ids.length;
  }

  #take(final: boolean): string {
    this.#decodeNew(final);
    const text = this.#text;
    let end = text.length;
    // The earliest occurrence of any stop string ends the text.
    let stopAt = -1;
    for (const s of this.stop) {
      const at = text.indexOf(s, Math.max(0, this.#emitted - s.length + 1));
      if (at >= 0 && at < end + s.length && (stopAt < 0 || at < stopAt)) stopAt = at;
    }
    if (stopAt >= 0) {
      this.#stopped = true;
      const out = text.slice(this.#emitted, Math.max(this.#emitted, stopAt));
      this.#emitted = Math.max(this.#emitted, stopAt);
      return out;
    }
    if (!final) {
      // Hold back the longest tail that is the start of a stop string.
      let hold = 0;
      for (const s of this.stop) {
        for (let n = Math.min(s.length - 1, end - this.#emitted); n > hold; n--) {
          if (text.endsWith(s.slice(0, n), end)) {
            hold = n;
            break;
          }
        }
      }
      end -= hold;
    }
    const out = text.slice(this.#emitted, end);
    this.#emitted = Math.max(this.#emitted, end);
    return out;
  }
}
