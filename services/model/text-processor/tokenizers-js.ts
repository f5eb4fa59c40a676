// The part of @huggingface/tokenizers (tokenizers.js) that Loupe uses, typed here: the
// package's .d.ts files import each other without file extensions, which `NodeNext`
// resolution cannot follow, so its own exports type as `any` or go missing.
import type { TextDecoder } from 'node:util';

import * as tokenizersJs from '@huggingface/tokenizers';

export interface LibTokenizer {
  readonly decoder: LibDecoder | null;
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  tokenize(text: string, options?: { add_special_tokens?: boolean }): string[];
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_vocab(withAddedTokens?: boolean): Map<string, number>;
}

export interface LibDecoder {
  decode(tokens: string[]): string;
}

/** Turns runs of `<0xNN>` tokens into text with this TextDecoder. */
export interface LibByteFallbackDecoder extends LibDecoder {
  text_decoder: TextDecoder;
}

export interface LibSequenceDecoder extends LibDecoder {
  decoders: LibDecoder[];
}

interface TokenizersJs {
  Tokenizer: new (tokenizerJson: object, tokenizerConfig: object) => LibTokenizer;
  ByteFallbackDecoder: abstract new (...args: never[]) => LibByteFallbackDecoder;
  SequenceDecoder: abstract new (...args: never[]) => LibSequenceDecoder;
}

export const { Tokenizer, ByteFallbackDecoder, SequenceDecoder } =
  tokenizersJs as unknown as TokenizersJs;
