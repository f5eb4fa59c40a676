import { readFileSync } from 'node:fs';

import { TextFileError } from './text-error.js';

export type JsonObject = Record<string, unknown>;

/**
 * Reads a JSON object from `path`. Returns `undefined` when the file does not exist and
 * `optional` is set; every other problem is a `TextFileError` naming the file.
 */
export function readJsonObject(path: string, { optional = false } = {}): JsonObject | undefined {
  const text = readTextFile(path, { optional });
  if (text === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new TextFileError(`${path} is not valid JSON: ${(error as Error).message}`, {
      cause: error,
    });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new TextFileError(`${path} must hold a JSON object`);
  }
  return parsed as JsonObject;
}

/** Reads a UTF-8 file; `undefined` when it does not exist and `optional` is set. */
export function readTextFile(path: string, { optional = false } = {}): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      if (optional) return undefined;
      throw new TextFileError(`${path} is missing`, { cause: error });
    }
    throw new TextFileError(`cannot read ${path}: ${(error as Error).message}`, { cause: error });
  }
}

/** A special token as tokenizer_config.json writes it: a string or `{ content: string }`. */
export function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && value !== null && 'content' in value) {
    const content = (value as { content: unknown }).content;
    if (typeof content === 'string') return content;
  }
  return undefined;
}
