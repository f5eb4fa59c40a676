import { join } from 'node:path';

import { useReferenceByteFallback } from './byte-fallback.js';
import { type JsonObject, readJsonObject, tokenContent } from './read-json.js';
import { TextFileError } from './text-error.js';
import { type LibTokenizer, Tokenizer } from './tokenizers-js.js';

export interface EncodeOptions {
  /** Add the tokenizer's special tokens (BOS `<s>` for Idefics2), as the reference's default. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (`<s>`, `</s>`, `<image>`, `<end_of_utterance>`...); default false. */
  skipSpecialTokens?: boolean;
}

/**
 * A checkpoint's tokenizer (tokenizer.json + tokenizer_config.json), run by tokenizers.js
 * with two adjustments that make it behave as the reference, transformers'
 * `LlamaTokenizerFast`:
 * - Llama tokenizers get their BOS/EOS post-processor from `add_bos_token` /
 *   `add_eos_token` (defaults true / false), as `LlamaTokenizerFast.update_post_processor`
 *   does on load, whatever tokenizer.json holds.
 * - byte-fallback decoding follows the Rust rule for invalid UTF-8 (byte-fallback.ts).
 */
export class TextTokenizer {
  /** Entries including the added tokens (the reference's `len(tokenizer)`). */
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  readonly unkTokenId: number | undefined;
  /** The special tokens of tokenizer_config.json (`bos_token`...), as strings. */
  readonly specialTokens: Readonly<Record<'bos' | 'eos' | 'pad' | 'unk', string | undefined>>;

  private readonly tokenizer: LibTokenizer;

  constructor(tokenizerJson: JsonObject, tokenizerConfig: JsonObject) {
    const config = { ...tokenizerConfig };
    const specialTokens = {
      bos: tokenContent(config.bos_token),
      eos: tokenContent(config.eos_token),
      pad: tokenContent(config.pad_token),
      unk: tokenContent(config.unk_token),
    };
    // tokenizers.js reads these as plain strings.
    for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
      const content = tokenContent(config[key]);
      if (content !== undefined) config[key] = content;
    }
    // The reference's default (PreTrainedTokenizerBase, transformers 4.54) is false;
    // tokenizers.js would default to true and rewrite " ." as "." when decoding.
    config.clean_up_tokenization_spaces ??= false;
    const json = { ...tokenizerJson };
    const idOf = (token: string | undefined): number | undefined =>
      token === undefined ? undefined : idInTokenizerJson(json, token);
    if (isLlamaTokenizer(config)) {
      json.post_processor = llamaPostProcessor(config, specialTokens, idOf);
    }
    this.tokenizer = new Tokenizer(json, config);
    useReferenceByteFallback(this.tokenizer.decoder);
    this.specialTokens = Object.freeze(specialTokens);
    this.bosTokenId = this.tokenToId(specialTokens.bos);
    this.eosTokenId = this.tokenToId(specialTokens.eos);
    this.padTokenId = this.tokenToId(specialTokens.pad);
    this.unkTokenId = this.tokenToId(specialTokens.unk);
    this.vocabSize = this.tokenizer.get_vocab(true).size;
  }

  /** Token ids of `text`; with special tokens (BOS) by default, like `tokenizer(text)`. */
  encode(text: string, { addSpecialTokens = true }: EncodeOptions = {}): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /** Token strings of `text` (with special tokens when asked), for logs and tests. */
  tokenize(text: string, { addSpecialTokens = false }: EncodeOptions = {}): string[] {
    return this.tokenizer.tokenize(text, { add_special_tokens: addSpecialTokens });
  }

  /** Text of `ids`, as the reference's `tokenizer.decode(ids, skip_special_tokens=...)`. */
  decode(ids: readonly number[], { skipSpecialTokens = false }: DecodeOptions = {}): string {
    for (const [index, id] of ids.entries()) {
      if (!Number.isInteger(id) || id < 0 || this.tokenizer.id_to_token(id) === undefined) {
        throw new RangeError(
          `decode: ids[${index}] must be a token id in [0, ${this.vocabSize}), got ${id}`,
        );
      }
    }
    // tokenizers.js refuses an empty list; the reference decodes it to ''.
    if (ids.length === 0) return '';
    return this.tokenizer.decode([...ids], { skip_special_tokens: skipSpecialTokens });
  }

  tokenToId(token: string | undefined): number | undefined {
    return token === undefined ? undefined : this.tokenizer.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tokenizer.id_to_token(id);
  }
}

/** Loads `<dir>/tokenizer.json` and `<dir>/tokenizer_config.json`. */
export function loadTokenizer(dir: string): TextTokenizer {
  const jsonPath = join(dir, 'tokenizer.json');
  const configPath = join(dir, 'tokenizer_config.json');
  const tokenizerJson = readJsonObject(jsonPath) as JsonObject;
  const tokenizerConfig = readJsonObject(configPath) as JsonObject;
  if (typeof tokenizerJson.model !== 'object' || tokenizerJson.model === null) {
    throw new TextFileError(`${jsonPath}: \`model\` must be an object`);
  }
  try {
    return new TextTokenizer(tokenizerJson, tokenizerConfig);
  } catch (error) {
    if (error instanceof TextFileError) throw error;
    throw new TextFileError(
      `cannot build a tokenizer from ${jsonPath} and ${configPath}: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

function isLlamaTokenizer(config: JsonObject): boolean {
  const name = config.tokenizer_class;
  return name === 'LlamaTokenizer' || name === 'LlamaTokenizerFast';
}

function idInTokenizerJson(json: JsonObject, token: string): number | undefined {
  const added = Array.isArray(json.added_tokens) ? (json.added_tokens as unknown[]) : [];
  for (const entry of added) {
    const { content, id } = entry as { content?: unknown; id?: unknown };
    if (content === token && typeof id === 'number') return id;
  }
  const vocab = (json.model as { vocab?: unknown }).vocab;
  if (typeof vocab === 'object' && vocab !== null && !Array.isArray(vocab)) {
    const id = (vocab as Record<string, unknown>)[token];
    if (typeof id === 'number') return id;
  }
  return undefined;
}

/**
 * The TemplateProcessing that `LlamaTokenizerFast.update_post_processor` builds:
 * single `[<s>] $A [</s>]`, pair `[<s>] $A [</s>] [<s>] $B [</s>]`, brackets per flag.
 */
function llamaPostProcessor(
  config: JsonObject,
  tokens: { bos: string | undefined; eos: string | undefined },
  idOf: (token: string | undefined) => number | undefined,
): JsonObject {
  const addBos = config.add_bos_token ?? true;
  const addEos = config.add_eos_token ?? false;
  const specials: Record<string, { id: string; ids: number[]; tokens: string[] }> = {};
  const special = (flag: unknown, which: 'bos' | 'eos'): string | undefined => {
    if (flag !== true) return undefined;
    const token = tokens[which];
    const id = idOf(token);
    if (token === undefined || id === undefined) {
      throw new TextFileError(
        `tokenizer_config.json: \`add_${which}_token\` is true but \`${which}_token\` ` +
          `(${JSON.stringify(token)}) is not in the vocabulary`,
      );
    }
    specials[token] = { id: token, ids: [id], tokens: [token] };
    return token;
  };
  const bos = special(addBos, 'bos');
  const eos = special(addEos, 'eos');
  const sequence = (id: 'A' | 'B', typeId: number): JsonObject[] => [
    ...(bos === undefined ? [] : [{ SpecialToken: { id: bos, type_id: typeId } }]),
    { Sequence: { id, type_id: typeId } },
    ...(eos === undefined ? [] : [{ SpecialToken: { id: eos, type_id: typeId } }]),
  ];
  return {
    type: 'TemplateProcessing',
    single: sequence('A', 0),
    pair: [...sequence('A', 0), ...sequence('B', 1)],
    special_tokens: specials,
  };
}
