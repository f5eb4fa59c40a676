import { TextDecoder } from 'node:util';

import { ByteFallbackDecoder, type LibDecoder, SequenceDecoder } from './tokenizers-js.js';

/**
 * The UTF-8 rule of the Rust `ByteFallback` decoder, which the reference uses: a run of
 * consecutive `<0xNN>` tokens becomes its UTF-8 text when the whole run is valid UTF-8,
 * and otherwise one U+FFFD per byte. tokenizers.js 0.2.0 decodes the run with a lenient
 * `TextDecoder` instead, which keeps the valid parts (`<0xA9><0x41>` reads "�A" there and
 * "��" in the reference). This matters for a model that emits a broken byte sequence.
 */
class WholeRunUtf8Decoder extends TextDecoder {
  private readonly strict = new TextDecoder('utf-8', { fatal: true });

  override decode(input?: Uint8Array): string {
    if (input === undefined) return '';
    try {
      return this.strict.decode(input);
    } catch {
      return '\uFFFD'.repeat(input.byteLength);
    }
  }
}

/** Gives every ByteFallback step of `decoder` (nested in sequences too) the reference's rule. */
export function useReferenceByteFallback(decoder: LibDecoder | null): void {
  if (decoder === null) return;
  if (decoder instanceof ByteFallbackDecoder) {
    decoder.text_decoder = new WholeRunUtf8Decoder();
  } else if (decoder instanceof SequenceDecoder) {
    for (const step of decoder.decoders) useReferenceByteFallback(step);
  }
}
