// Reads the model goldens of test/fixtures/model (see test/fixtures/README.md "Model
// goldens") and prepares checkpoints the text graph can be written beside.
import { copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors } from '../safetensors/index.js';
import { writeTinyModel } from '../tiny/index.js';

export const modelFixtures = new URL('../../../test/fixtures/model/', import.meta.url).pathname;

export interface GoldenCase {
  name: string;
  inputIds: number[];
  prefillLogits: Float32Array;
  imageRows?: Float32Array;
  generatedIds: number[];
}

interface RawCase {
  generated_ids: number[];
}

export function loadGoldenCase(name: string): GoldenCase {
  const expected = JSON.parse(readFileSync(join(modelFixtures, 'expected.json'), 'utf8')) as {
    cases: Record<string, RawCase>;
  };
  const raw = expected.cases[name];
  if (!raw) throw new Error(`no golden case ${name} in expected.json`);
  const file = readSafetensors(join(modelFixtures, `${name}.safetensors`));
  const tensor = (key: string) => file.get(key);
  const ids = tensor('input_ids');
  const logits = tensor('prefill_logits');
  if (!ids || !logits) throw new Error(`${name}.safetensors lacks input_ids or prefill_logits`);
  const rows = tensor('image_hidden_states');
  return {
    name,
    inputIds: Array.from(ids.data as BigInt64Array, Number),
    prefillLogits: Float32Array.from(logits.data as Float32Array),
    ...(rows ? { imageRows: Float32Array.from(rows.data as Float32Array) } : {}),
    generatedIds: raw.generated_ids,
  };
}

/** The names of the golden cases whose name starts with `prefix`. */
export function goldenCaseNames(prefix: string): string[] {
  const expected = JSON.parse(readFileSync(join(modelFixtures, 'expected.json'), 'utf8')) as {
    cases: Record<string, RawCase>;
  };
  return Object.keys(expected.cases).filter((n) => n.startsWith(prefix));
}

/** A copy of the reference-saved tester checkpoint in a temporary directory. */
export function copyTesterCheckpoint(): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-tester-'));
  for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) {
    copyFileSync(join(modelFixtures, 'tester', f), join(dir, f));
  }
  return dir;
}

/** The seed-0 tiny checkpoint the tiny-* goldens were made from, in a temporary directory. */
export function makeTinyCheckpoint(): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-tiny-'));
  writeTinyModel({ out: dir, seed: 0 });
  return dir;
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new RangeError(`lengths differ: ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}
