import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeTinyCheckpoint } from '../../../test/helpers/tiny-checkpoint.js';
import { openCheckpoint } from '../checkpoint/index.js';
import { readSafetensors } from '../safetensors/index.js';
import { convertCheckpoint } from './convert-checkpoint.js';
import { bfloat16ToFloat32, float32ToFloat16 } from './half.js';

const fixtures = JSON.parse(
  readFileSync(new URL('../../../test/fixtures/config/resolved.json', import.meta.url), 'utf8'),
) as { cases: Record<string, { config: Record<string, unknown> }> };
const TESTER = fixtures.cases.tester!.config;

const dirs: string[] = [];
const tmp = () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-convert-'));
  dirs.push(dir);
  return join(dir, 'out');
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('convertCheckpoint', () => {
  it('widens bfloat16 shards to float32 exactly, keeping shard names, index and other files', () => {
    const from = writeTinyCheckpoint(TESTER, { shards: 2, dtype: 'BF16', seed: 7 });
    dirs.push(from);
    writeFileSync(join(from, 'tokenizer.json'), '{"model": {}}');
    const to = tmp();
    const summary = convertCheckpoint({ from, to, dtype: 'float32' });
    expect(summary.files.sort()).toEqual([
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
    ]);

    const converted = openCheckpoint(to);
    expect(converted.dtype).toBe('F32');
    expect(readFileSync(join(to, 'tokenizer.json'), 'utf8')).toBe('{"model": {}}');
    expect(JSON.parse(readFileSync(join(to, 'config.json'), 'utf8')).torch_dtype).toBe('float32');
    const index = JSON.parse(readFileSync(join(to, 'model.safetensors.index.json'), 'utf8'));
    expect(index.metadata.total_size).toBe(summary.bytes);
    expect(summary.bytes).toBe(
      [...converted.tensors.values()].reduce((a, t) => a + t.byteLength, 0),
    );

    for (const file of summary.files) {
      const before = readSafetensors(join(from, file));
      const after = readSafetensors(join(to, file));
      expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
      expect(after.metadata).toEqual({ format: 'pt' });
      for (const [name, tensor] of before) {
        const bits = tensor.data as Uint16Array;
        const values = after.get(name)!.data as Float32Array;
        expect(after.get(name)!.shape).toEqual(tensor.shape);
        let mismatches = 0;
        for (let i = 0; i < bits.length; i++)
          if (values[i] !== bfloat16ToFloat32(bits[i]!)) mismatches++;
        expect(mismatches, name).toBe(0);
      }
    }
  });

  it('narrows float32 to float16 rounding to nearest even', () => {
    const from = writeTinyCheckpoint(TESTER, { dtype: 'F32', seed: 3 });
    dirs.push(from);
    const to = tmp();
    convertCheckpoint({ from, to, dtype: 'float16' });
    const before = readSafetensors(join(from, 'model.safetensors'));
    const after = readSafetensors(join(to, 'model.safetensors'));
    for (const [name, tensor] of before) {
      const values = tensor.data as Float32Array;
      const bits = after.get(name)!.data as Uint16Array;
      expect(after.get(name)!.dtype).toBe('F16');
      let mismatches = 0;
      for (let i = 0; i < values.length; i++)
        if (bits[i] !== float32ToFloat16(values[i]!)) mismatches++;
      expect(mismatches, name).toBe(0);
    }
    expect(openCheckpoint(to).dtype).toBe('F16');
  });

  it('refuses a non-empty destination and a broken source before writing anything', () => {
    const from = writeTinyCheckpoint(TESTER);
    dirs.push(from);
    expect(() => convertCheckpoint({ from, to: from, dtype: 'float16' })).toThrow(
      /exists and is not empty/,
    );
    rmSync(join(from, 'config.json'));
    const to = tmp();
    expect(() => convertCheckpoint({ from, to, dtype: 'float16' })).toThrow(
      /config\.json is missing/,
    );
  });
});
