// Turning a stream of token ids into a stream of text: special tokens are not shown, a
// UTF-8 character split across tokens is held back until it is whole, and stop strings end
// the text (they are not shown, and neither is anything after them). Text that could still
// turn out to be the start of a stop string is held back until it cannot.
import type { TextTokenizer } from '../model/index.js';

export class IncrementalDetokenizer {
  readonly #ids: number[] = [];
  /** Characters of the decoded text already handed out. */
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

  #take(final: boolean): string {
    const text = this.tokenizer.decode(this.#ids, { skipSpecialTokens: true });
    // An incomplete UTF-8 sequence decodes to U+FFFD at the end; wait for the rest.
    let end = text.length;
    if (!final) while (end > this.#emitted && text[end - 1] === '\uFFFD') end--;
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
