import { join } from 'node:path';

import { readJsonObject } from './read-json.js';
import { TextFileError } from './text-error.js';
import { type TextTokenizer, loadTokenizer } from './tokenizer.js';

export interface EosOptions {
  /** The checkpoint's tokenizer, when already loaded (saves reading it again). */
  tokenizer?: TextTokenizer;
}

/**
 * The ids that end generation: `eos_token_id` of `<dir>/generation_config.json` (a number
 * or a list; [2, 32002] = `</s>`, `<end_of_utterance>` for idefics2-8b), or, when that
 * file or key is absent, the tokenizer's `eos_token`.
 */
export function eosTokenIds(dir: string, { tokenizer }: EosOptions = {}): number[] {
  const path = join(dir, 'generation_config.json');
  const config = readJsonObject(path, { optional: true });
  const value = config?.eos_token_id;
  if (value !== undefined && value !== null) {
    const ids = Array.isArray(value) ? (value as unknown[]) : [value];
    const valid = ids.length > 0 && ids.every((id) => Number.isInteger(id) && (id as number) >= 0);
    if (!valid) {
      throw new TextFileError(
        `${path}: \`eos_token_id\` must be a token id or a non-empty list of them, got ` +
          JSON.stringify(value),
      );
    }
    return [...new Set(ids as number[])];
  }
  const eos = (tokenizer ?? loadTokenizer(dir)).eosTokenId;
  if (eos === undefined) {
    throw new TextFileError(
      `${dir}: no EOS token: neither generation_config.json \`eos_token_id\` nor a ` +
        'tokenizer_config.json `eos_token` in the vocabulary',
    );
  }
  return [eos];
}

/**
 * Token sequences the model must never generate: `bad_words_ids` of
 * `<dir>/generation_config.json` (idefics2-8b bans `<fake_token_around_image>` and `<image>`,
 * which belong to prompts only), or none when the file or key is absent.
 */
export function badWordsIds(dir: string): number[][] {
  const path = join(dir, 'generation_config.json');
  const value = readJsonObject(path, { optional: true })?.bad_words_ids;
  if (value === undefined || value === null) return [];
  const valid =
    Array.isArray(value) &&
    value.every(
      (seq) =>
        Array.isArray(seq) &&
        seq.length > 0 &&
        seq.every((id) => Number.isInteger(id) && (id as number) >= 0),
    );
  if (!valid) {
    throw new TextFileError(
      `${path}: \`bad_words_ids\` must be a list of non-empty lists of token ids, got ${JSON.stringify(value).slice(0, 80)}`,
    );
  }
  return value as number[][];
}
