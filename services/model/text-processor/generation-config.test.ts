import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { eosTokenIds } from './generation-config.js';
import { TextFileError } from './text-error.js';
import { loadTokenizer } from './tokenizer.js';

const TOKENIZER_DIR = fileURLToPath(
  new URL('../../../test/fixtures/text/tokenizer/', import.meta.url),
);

const temps: string[] = [];
afterAll(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});
function checkpointDir(generationConfig?: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-eos-'));
  temps.push(dir);
  for (const file of ['tokenizer.json', 'tokenizer_config.json']) {
    copyFileSync(join(TOKENIZER_DIR, file), join(dir, file));
  }
  if (generationConfig !== undefined) {
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(generationConfig));
  }
  return dir;
}

describe('eosTokenIds', () => {
  it('reads the list of generation_config.json (idefics2-8b: </s>, <end_of_utterance>)', () => {
    const dir = checkpointDir({ bos_token_id: 1, eos_token_id: [2, 32002], pad_token_id: 0 });
    expect(eosTokenIds(dir)).toEqual([2, 32002]);
  });

  it('reads a single id', () => {
    expect(eosTokenIds(checkpointDir({ eos_token_id: 2 }))).toEqual([2]);
  });

  it("falls back to the tokenizer's eos_token", () => {
    expect(eosTokenIds(checkpointDir())).toEqual([2]);
    expect(eosTokenIds(checkpointDir({ bos_token_id: 1 }))).toEqual([2]);
    const dir = checkpointDir();
    expect(eosTokenIds(dir, { tokenizer: loadTokenizer(dir) })).toEqual([2]);
  });

  it('refuses a malformed eos_token_id, naming the file', () => {
    const dir = checkpointDir({ eos_token_id: ['2'] });
    expect(() => eosTokenIds(dir)).toThrow(TextFileError);
    expect(() => eosTokenIds(dir)).toThrow(
      `${join(dir, 'generation_config.json')}: \`eos_token_id\` must be a token id`,
    );
    expect(() => eosTokenIds(checkpointDir({ eos_token_id: [] }))).toThrow(TextFileError);
  });
});
