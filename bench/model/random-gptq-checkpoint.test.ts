import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { expectedTensors } from '../../services/model/checkpoint/index.js';
import { parseIdefics2Config } from '../../services/model/config/index.js';
import { float16ToFloat32 } from '../../services/model/convert/index.js';
import {
  elementCount,
  readSafetensors,
  readSafetensorsHeader,
} from '../../services/model/safetensors/index.js';
import { loadTokenizer } from '../../services/model/text-processor/index.js';
import {
  BENCH_MARKER_FILE,
  benchShapeConfig,
  isGptqQuantized,
  planGptqTensors,
  RANDOM_GPTQ_FORMAT_VERSION,
  readBenchMarker,
  writeRandomGptqCheckpoint,
  type GptqBits,
} from './random-gptq-checkpoint.js';

const root = mkdtempSync(join(tmpdir(), 'loupe-random-gptq-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** The names, dtypes and shapes a GPTQ checkpoint of `config` must hold. */
function gptqShapes(config: Record<string, unknown>, bits: GptqBits, group: number) {
  const perWord = 32 / bits;
  const out = new Map<string, { dtype: string; shape: number[] }>();
  for (const [name, shape] of expectedTensors(parseIdefics2Config(config))) {
    if (!isGptqQuantized(name)) {
      out.set(name, { dtype: 'F32', shape });
      continue;
    }
    const [n, k] = shape as [number, number];
    const base = name.slice(0, -'.weight'.length);
    out.set(`${base}.qweight`, { dtype: 'I32', shape: [k / perWord, n] });
    out.set(`${base}.qzeros`, { dtype: 'I32', shape: [k / group, Math.ceil(n / perWord)] });
    out.set(`${base}.scales`, { dtype: 'F16', shape: [k / group, n] });
    out.set(`${base}.g_idx`, { dtype: 'I32', shape: [k] });
  }
  return out;
}

describe('writeRandomGptqCheckpoint', () => {
  for (const bits of [4, 8] as const) {
    it(`writes every ${bits}-bit tensor with its dtype and shape, sharded, with a right index`, () => {
      const out = join(root, `tiny-${bits}`);
      const config = benchShapeConfig('tiny', 600);
      const summary = writeRandomGptqCheckpoint({
        out,
        config,
        bits,
        groupSize: 32,
        seed: 1,
        shardBytes: 100_000,
        shape: 'tiny',
      });
      expect(existsSync(`${out}.tmp`)).toBe(false);
      const want = gptqShapes(config, bits, 32);
      expect(want.size).toBe(summary.tensors);
      // 2 text layers × 7 projections, each 4 tensors instead of 1.
      expect(summary.tensors).toBe(expectedTensors(parseIdefics2Config(config)).size + 2 * 7 * 3);

      const index = JSON.parse(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8')) as {
        metadata: { total_size: number };
        weight_map: Record<string, string>;
      };
      expect(Object.keys(index.weight_map).sort()).toEqual([...want.keys()].sort());
      const files = [...new Set(Object.values(index.weight_map))].sort();
      expect(files.length).toBeGreaterThan(2);
      expect(files).toEqual([...summary.files].sort());
      expect(files[0]).toBe(`model-00001-of-${String(files.length).padStart(5, '0')}.safetensors`);
      let total = 0;
      const seen = new Set<string>();
      for (const file of files) {
        const header = readSafetensorsHeader(join(out, file));
        expect(header.metadata).toEqual({ format: 'pt' });
        for (const [name, entry] of Object.entries(header.tensors)) {
          expect(index.weight_map[name]).toBe(file);
          expect({ dtype: entry.dtype, shape: entry.shape }).toEqual(want.get(name));
          total += entry.byteLength;
          seen.add(name);
        }
      }
      expect(seen.size).toBe(want.size);
      expect(index.metadata.total_size).toBe(total);
      expect(summary.totalBytes).toBe(total);

      // Values: zero points, g_idx, scales, float tensors.
      const layer = 'model.text_model.layers.1.mlp.down_proj';
      const tensors = readSafetensors(join(out, index.weight_map[`${layer}.qzeros`]!));
      const zeros = tensors.get(`${layer}.qzeros`)!.data as Int32Array;
      expect(new Set(zeros)).toEqual(new Set([bits === 4 ? 0x77777777 : 0x7f7f7f7f]));
      const gidx = readSafetensors(join(out, index.weight_map[`${layer}.g_idx`]!)).get(
        `${layer}.g_idx`,
      )!.data as Int32Array;
      expect([...gidx]).toEqual(Array.from({ length: 128 }, (_, k) => Math.floor(k / 32)));
      const scales = readSafetensors(join(out, index.weight_map[`${layer}.scales`]!)).get(
        `${layer}.scales`,
      )!.data as Uint16Array;
      const expected = 0.5 / (Math.sqrt(128) * 2 ** (bits - 1));
      for (const s of scales) {
        expect(float16ToFloat32(s)).toBeGreaterThanOrEqual(expected * 0.74);
        expect(float16ToFloat32(s)).toBeLessThan(expected * 1.26);
      }
      const qweight = readSafetensors(join(out, index.weight_map[`${layer}.qweight`]!)).get(
        `${layer}.qweight`,
      )!.data as Int32Array;
      expect(new Set(qweight).size).toBeGreaterThan(qweight.length / 2); // random words
      const norm = 'model.text_model.layers.0.input_layernorm.weight';
      const normData = readSafetensors(join(out, index.weight_map[norm]!)).get(norm)!
        .data as Float32Array;
      expect(new Set(normData)).toEqual(new Set([1]));
      const head = readSafetensors(join(out, index.weight_map['lm_head.weight']!)).get(
        'lm_head.weight',
      )!.data as Float32Array;
      const std = Math.sqrt(head.reduce((s, v) => s + v * v, 0) / head.length);
      expect(std).toBeGreaterThan(0.9 / 8);
      expect(std).toBeLessThan(1.1 / 8); // 1/√hidden, hidden 64

      const written = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      expect(written.torch_dtype).toBe('float32');
      expect(written.quantization_config).toMatchObject({
        quant_method: 'gptq',
        bits,
        group_size: 32,
        sym: true,
        desc_act: false,
        checkpoint_format: 'gptq',
      });
      expect(readBenchMarker(out)).toMatchObject({
        version: RANDOM_GPTQ_FORMAT_VERSION,
        shape: 'tiny',
        bits,
        groupSize: 32,
        seed: 1,
      });
    });
  }

  it('pads the tokenizer so every id of the model decodes, encoding unchanged', () => {
    const out = join(root, 'tiny-4');
    const tokenizer = loadTokenizer(out);
    expect(tokenizer.decode([599])).toBe('tok599');
    expect(tokenizer.encode('a picture of birds')).toEqual(
      loadTokenizer(join(root, 'tiny-8')).encode('a picture of birds'),
    );
    for (const name of ['generation_config.json', 'preprocessor_config.json', 'chat_template.json'])
      expect(existsSync(join(out, name))).toBe(true);
  });

  it('replaces an earlier bench checkpoint but not another directory', () => {
    const out = join(root, 'replace');
    const options = { out, config: benchShapeConfig('tiny'), bits: 4 as const, groupSize: 32 };
    writeRandomGptqCheckpoint({ ...options, seed: 1, shardBytes: 1e9 });
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true);
    writeRandomGptqCheckpoint({ ...options, seed: 2, shardBytes: 1e9 });
    expect(readBenchMarker(out)?.seed).toBe(2);
    const other = join(root, 'other');
    mkdirSync(other);
    writeFileSync(join(other, 'keep.txt'), 'mine');
    expect(() => writeRandomGptqCheckpoint({ ...options, out: other, seed: 1 })).toThrow(
      new RegExp(`not a bench checkpoint \\(no ${BENCH_MARKER_FILE}\\)`),
    );
    expect(readFileSync(join(other, 'keep.txt'), 'utf8')).toBe('mine');
  });

  it('refuses an input size the packing or the group does not divide', () => {
    expect(() => planGptqTensors(benchShapeConfig('tiny'), 4, 128)).toThrow(
      /input size 64 must be a multiple of 8 \(4-bit packing\) and of the group size 128/,
    );
  });
});

describe('benchShapeConfig', () => {
  it('8b has the published idefics2-8b shapes', () => {
    const fixtures = JSON.parse(
      readFileSync(new URL('../../test/fixtures/config/resolved.json', import.meta.url), 'utf8'),
    ) as { cases: Record<string, { config: Record<string, unknown> }> };
    const published = expectedTensors(parseIdefics2Config(fixtures.cases['idefics2-8b']!.config));
    const ours = expectedTensors(parseIdefics2Config(benchShapeConfig('8b')));
    expect([...ours]).toEqual([...published]);
    let params = 0;
    for (const shape of ours.values()) params += elementCount(shape);
    expect(params).toBe(8_402_768_112);
  });

  it('plans the 8b GPTQ tensors with 4-bit packing and 128-row groups', () => {
    const plan = new Map(
      planGptqTensors(benchShapeConfig('8b'), 4, 128).map((t) => [t.name, t.shape]),
    );
    expect(plan.get('model.text_model.layers.31.mlp.down_proj.qweight')).toEqual([1792, 4096]);
    expect(plan.get('model.text_model.layers.31.mlp.down_proj.qzeros')).toEqual([112, 512]);
    expect(plan.get('model.text_model.layers.31.mlp.down_proj.scales')).toEqual([112, 4096]);
    expect(plan.get('model.text_model.layers.0.self_attn.k_proj.qweight')).toEqual([512, 1024]);
    expect(plan.get('model.text_model.layers.0.self_attn.k_proj.g_idx')).toEqual([4096]);
    expect(plan.has('model.text_model.layers.0.self_attn.k_proj.weight')).toBe(false);
    expect(plan.get('lm_head.weight')).toEqual([32003, 4096]);
  });
});
