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
// Private-use stand-ins for control tokens, in plane 15: sentinels (a control token as the
// guarded tokenizer spells it) from U+F0000, literals (a control token's spelling in user
// text, to be read as plain text) from U+F1000.
const RESERVED = /[\u{F0000}-\u{FFFFD}]/gu;
const sentinel = (j: number) => String.fromCodePoint(0xf0000 + j);
const literal = (j: number) => String.fromCodePoint(0xf1000 + j);

export class TextTokenizer {
  /** Entries including the added tokens (the reference's `len(tokenizer)`). */
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  readonly unkTokenId: number | undefined;
  /** The special tokens of tokenizer_config.json (`bos_token`...), as strings. */
  readonly specialTokens: Readonly<Record<'bos' | 'eos' | 'pad' | 'unk', string | undefined>>;

  /**
   * The control tokens: added tokens marked special (`<s>`, `</s>`, `<unk>`, `<image>`,
   * `<fake_token_around_image>`, `<end_of_utterance>`...), longest first.
   */
  readonly controlTokens: readonly string[];

  private readonly tokenizer: LibTokenizer;
  /**
   * The same tokenizer with every control token respelled as one private-use character
   * (sentinel), so that the control tokens' usual spellings are plain text to it; see
   * escapeLiteral and encodeWithLiterals.
   */
  private readonly guarded: LibTokenizer;

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
    const added = Array.isArray(json.added_tokens) ? (json.added_tokens as JsonObject[]) : [];
    this.controlTokens = added
      .filter((t) => t.special === true && typeof t.content === 'string' && t.content !== '')
      .map((t) => t.content as string)
      .sort((a, b) => b.length - a.length);
    if (this.controlTokens.length > 0x1000)
      throw new TextFileError(`tokenizer.json has ${this.controlTokens.length} special tokens`);
    const sentinelOf = new Map(this.controlTokens.map((t, j) => [t, sentinel(j)]));
    this.guarded = new Tokenizer(
      {
        ...json,
        added_tokens: added.map((t) =>
          typeof t.content === 'string' && sentinelOf.has(t.content)
            ? { ...t, content: sentinelOf.get(t.content) }
            : t,
        ),
      },
      config,
    );
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

  /**
   * `text` from a user (a message's text) made safe to put into a prompt: each control
   * token's spelling (`<image>`, `<end_of_utterance>`...) becomes a private-use stand-in
   * that encodeWithLiterals tokenizes as the plain text it was, never as the control token,
   * so no one can forge images or turns. Characters of Unicode's plane 15 (where the
   * stand-ins live) become U+FFFD.
   */
  escapeLiteral(text: string): string {
    let out = text.replace(RESERVED, '\uFFFD');
    this.controlTokens.forEach((token, j) => {
      if (out.includes(token)) out = out.split(token).join(literal(j));
    });
    return out;
  }

  /**
   * Token ids of a prompt whose user text went through escapeLiteral: the control tokens
   * the template and the image expansion wrote stay control tokens, the escaped ones are
   * tokenized as plain text. Without escapes it equals `encode`.
   */
  encodeWithLiterals(text: string, { addSpecialTokens = true }: EncodeOptions = {}): number[] {
    let out = text;
    this.controlTokens.forEach((token, j) => {
      if (out.includes(token)) out = out.split(token).join(sentinel(j));
    });
    this.controlTokens.forEach((token, j) => {
      const stand = literal(j);
      if (out.includes(stand)) out = out.split(stand).join(token);
    });
    return this.guarded.encode(out, { add_special_tokens: addSpecialTokens }).ids;
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
