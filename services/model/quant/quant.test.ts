// GPTQ layout, quantization, repacking and the packed weight cache, without the reference:
// what Loupe writes reads back as documented, MatMulNBits computes the dequantized product,
// and every bad checkpoint or option is refused clearly with nothing half-written.
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CheckpointError, openCheckpoint } from '../checkpoint/index.js';
import { ConvertError, convertCheckpoint, float16ToFloat32 } from '../convert/index.js';
import { attr, createSession, GraphBuilder, makeTensor, readOutput } from '../onnx/index.js';
import { readSafetensors, writeSafetensors } from '../safetensors/index.js';
import { eosTokenIds } from '../text-processor/index.js';
import { generateGreedy, loadTextModel } from '../language-model/index.js';
import { seededUniform, writeTinyModel } from '../tiny/index.js';
import { dequantizeGptq, quantizeGptq, repackForMatMulNBits } from './gptq.js';
import { packTextWeights, resolveWeightCacheDir } from './packed-weights.js';
import { parseQuantizationConfig } from './quantization-config.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-quant-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let counter = 0;
const fresh = (name: string) => join(work, `${name}-${counter++}`);

const tiny = join(work, 'tiny');
writeTinyModel({ out: tiny, seed: 0 });

function randomWeight(n: number, k: number, seed: number): Float32Array {
  const next = seededUniform(seed);
  return Float32Array.from({ length: n * k }, () => (next() - 0.5) * 0.2);
}

describe('quantizeGptq and the documented layout', () => {
  it.each([
    [4, 32, false],
    [4, 128, true],
    [8, 64, false],
    [8, 32, true],
  ] as const)('%i-bit, groups of %i, sym %s: dequantizes to within a step', (bits, g, sym) => {
    const [n, k] = [24, 256];
    const w = randomWeight(n, k, bits * g);
    const q = quantizeGptq(w, { n, k, bits, groupSize: g, sym });
    expect(q.qweight.length).toBe((k / (32 / bits)) * n);
    expect(q.qzeros.length).toBe((k / g) * Math.ceil(n / (32 / bits)));
    expect(Array.from(q.gIdx.slice(0, g + 1))).toEqual([...Array(g).fill(0), 1]);
    const back = dequantizeGptq(q, { n, k, bits, groupSize: g });
    for (let r = 0; r < n; r++) {
      for (let i = 0; i < k; i++) {
        const step = float16ToFloat32(q.scales[Math.floor(i / g) * n + r]!);
        // Half a step, or a whole one where GPTQ's grid clips the group's extreme value.
        expect(Math.abs(back[r * k + i]! - w[r * k + i]!)).toBeLessThanOrEqual(step * 1.0001);
      }
    }
    if (sym) {
      const zero = (1 << (bits - 1)) - 1; // stored v1: 2^(b-1) - 1 in every field
      const word = bits === 4 ? zero * 0x11111111 : zero * 0x01010101;
      expect(Array.from(q.qzeros).every((z) => z >>> 0 === word >>> 0)).toBe(true);
    }
  });

  it('refuses a group size that does not divide the input and NaN weights', () => {
    expect(() =>
      quantizeGptq(new Float32Array(8 * 96), { n: 8, k: 96, bits: 4, groupSize: 64, sym: false }),
    ).toThrow(/group size 64 does not divide its input dimension 96 \(choose --group-size 32\)/);
    const w = new Float32Array(8 * 32);
    w[5] = Number.NaN;
    expect(() => quantizeGptq(w, { n: 8, k: 32, bits: 4, groupSize: 32, sym: true })).toThrow(
      /NaN or Infinity/,
    );
  });
});

describe('MatMulNBits on the repacked weights', () => {
  it.each([
    [4, 32, false],
    [4, 128, true],
    [8, 64, false],
  ] as const)(
    '%i-bit g%i sym %s: x · Wᵀ equals the product with the dequantized weights',
    async (bits, g, sym) => {
      const [n, k, rows] = [40, 256, 3];
      const q = quantizeGptq(randomWeight(n, k, 11), { n, k, bits, groupSize: g, sym });
      const shape = { n, k, bits, groupSize: g };
      const packed = repackForMatMulNBits(q, shape, { scaleType: 'float32', what: 'test' });
      expect(packed.zeroPoints === null).toBe(sym);
      const gb = new GraphBuilder({ name: 'nbits' });
      const x = gb.input('x', 'float32', [rows, k]);
      const inputs = [
        x,
        gb.initializer('b', 'uint8', [n, k / g, (g * bits) / 8], packed.b),
        gb.initializer('s', 'float32', [n * (k / g)], packed.scales),
        ...(packed.zeroPoints
          ? [gb.initializer('z', 'uint8', [packed.zeroPoints.length], packed.zeroPoints)]
          : []),
      ];
      gb.node1({
        opType: 'MatMulNBits',
        domain: 'com.microsoft',
        inputs,
        output: 'y',
        attributes: {
          K: attr.int(k),
          N: attr.int(n),
          bits: attr.int(bits),
          block_size: attr.int(g),
        },
      });
      gb.output('y', 'float32', [rows, n]);
      const session = await createSession(
        { name: 'nbits', bytes: gb.toBytes(), externalDataDir: work },
        { intraOpThreads: 1 },
      );
      const xs = randomWeight(rows, k, 5);
      const y = readOutput(
        await session.run({ x: makeTensor('float32', xs, [rows, k]) }),
        'y',
        'float32',
      ).data;
      await session.release();
      const w = dequantizeGptq(q, shape);
      let max = 0;
      for (let r = 0; r < rows; r++) {
        for (let o = 0; o < n; o++) {
          let sum = 0;
          for (let i = 0; i < k; i++) sum += xs[r * k + i]! * w[o * k + i]!;
          max = Math.max(max, Math.abs(sum - y[r * n + o]!));
        }
      }
      expect(max).toBeLessThan(1e-5);
    },
  );

  it('refuses a v1 zero point that underflowed (stored all ones)', () => {
    const q = quantizeGptq(randomWeight(8, 32, 1), {
      n: 8,
      k: 32,
      bits: 4,
      groupSize: 32,
      sym: false,
    });
    q.qzeros[0] = q.qzeros[0]! | 0xf;
    expect(() =>
      repackForMatMulNBits(
        q,
        { n: 8, k: 32, bits: 4, groupSize: 32 },
        { scaleType: 'float32', what: 'layer.q_proj' },
      ),
    ).toThrow(/layer\.q_proj\.qzeros: group 0 of output 0 stores 15, a zero point of 16/);
  });
});

describe('quantization_config', () => {
  const parse = (q: unknown) => parseQuantizationConfig({ quantization_config: q }, 'c.json');
  it('reads GPTQ and refuses what Loupe cannot run exactly, saying why', () => {
    expect(parse({ quant_method: 'gptq', bits: 4, group_size: 128, desc_act: false })).toEqual({
      method: 'gptq',
      bits: 4,
      groupSize: 128,
      sym: true,
      lmHead: false,
      vision: null,
    });
    expect(
      parse({
        quant_method: 'gptq',
        bits: 4,
        group_size: 128,
        loupe_vision: { bits: 8, group_size: 64 },
      })?.vision,
    ).toEqual({ bits: 8, groupSize: 64, sym: true });
    expect(() =>
      parse({
        quant_method: 'gptq',
        bits: 4,
        group_size: 128,
        loupe_vision: { bits: 2, group_size: 64 },
      }),
    ).toThrow(/loupe_vision\.bits must be 4 or 8, got 2/);
    expect(parseQuantizationConfig({}, 'c.json')).toBeNull();
    expect(() => parse({ quant_method: 'awq', bits: 4, group_size: 128 })).toThrow(
      /quant_method "awq" is not supported; Loupe loads "gptq"/,
    );
    expect(() => parse({ quant_method: 'gptq', bits: 4, group_size: 128, desc_act: true })).toThrow(
      /desc_act: true \(act-order\) is not supported/,
    );
    expect(() =>
      parse({ quant_method: 'gptq', bits: 4, group_size: 128, checkpoint_format: 'gptq_v2' }),
    ).toThrow(/checkpoint_format "gptq_v2" is not supported/);
    expect(() => parse({ quant_method: 'gptq', bits: 3, group_size: 128 })).toThrow(
      /bits must be 4 or 8, got 3/,
    );
    expect(() => parse({ quant_method: 'gptq', bits: 4, group_size: -1 })).toThrow(
      /group_size must be one of 32, 64, 128, got -1/,
    );
  });
});

describe('openCheckpoint on GPTQ checkpoints', () => {
  const quantized = fresh('q4');
  convertCheckpoint({ from: tiny, to: quantized, quantize: { bits: 4, groupSize: 32 } });

  function variant(edit: (config: Record<string, unknown>, dir: string) => void): string {
    const dir = fresh('variant');
    convertCheckpoint({ from: tiny, to: dir, quantize: { bits: 4, groupSize: 32 } });
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    edit(config, dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    return dir;
  }

  it('opens a converted checkpoint: quantized linears as four tensors, no float weight', () => {
    const c = openCheckpoint(quantized);
    expect(c.quantization).toMatchObject({ bits: 4, groupSize: 32, sym: false });
    expect(c.dtype).toBe('F32');
    const p = 'model.text_model.layers.0.mlp.down_proj';
    expect(c.tensors.has(`${p}.weight`)).toBe(false);
    expect(c.tensors.get(`${p}.qweight`)).toMatchObject({ dtype: 'I32', shape: [128 / 8, 64] });
    expect(c.tensors.get(`${p}.scales`)).toMatchObject({ dtype: 'F16', shape: [128 / 32, 64] });
  });

  it('refuses a missing tensor, a wrong dtype, and a group size that does not divide', () => {
    const missing = variant((_, dir) => {
      const file = readSafetensors(join(dir, 'model.safetensors'));
      const kept = [...file].filter(([n]) => !n.endsWith('layers.1.self_attn.k_proj.qzeros'));
      writeSafetensors(
        join(dir, 'model.safetensors'),
        Object.fromEntries(
          kept.map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape, data: t.data }]),
        ),
      );
    });
    expect(() => openCheckpoint(missing)).toThrow(
      /tensor model\.text_model\.layers\.1\.self_attn\.k_proj\.qzeros \[2, 4\] is missing .*\(a 4-bit GPTQ checkpoint stores qweight, qzeros, scales and g_idx/,
    );
    const eightBit = variant((config) => {
      (config.quantization_config as Record<string, unknown>).bits = 8;
    });
    expect(() => openCheckpoint(eightBit)).toThrow(CheckpointError);
    expect(() => openCheckpoint(eightBit)).toThrow(
      /qweight .* has shape \[8, 64\], but config\.json implies \[16, 64\]/,
    );
    const group = variant((config) => {
      (config.quantization_config as Record<string, unknown>).group_size = 128;
    });
    expect(() => openCheckpoint(group)).toThrow(
      /group_size 128 does not divide model\.text_model\.layers\.0\.self_attn\.q_proj's input dimension 64/,
    );
  });

  it('refuses permuted groups (act-order g_idx) when packing', () => {
    const dir = variant((_, d) => {
      const file = readSafetensors(join(d, 'model.safetensors'));
      const tensors = Object.fromEntries(
        [...file].map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape, data: t.data }]),
      );
      const gIdx = tensors['model.text_model.layers.0.self_attn.q_proj.g_idx']!.data as Int32Array;
      gIdx[0] = 1;
      writeSafetensors(join(d, 'model.safetensors'), tensors);
    });
    expect(() =>
      packTextWeights(openCheckpoint(dir), { type: 'float32', cacheDir: fresh('cache') }),
    ).toThrow(/q_proj\.g_idx\[0\] is 1, not 0 \/ group_size 32: the groups are permuted/);
  });

  it('packs once, reuses the file, and falls back to a temporary folder for a read-only checkpoint', () => {
    const cache = fresh('cache');
    const first = packTextWeights(openCheckpoint(quantized), { type: 'float32', cacheDir: cache });
    const second = packTextWeights(openCheckpoint(quantized), { type: 'float32', cacheDir: cache });
    expect([first.reused, second.reused]).toEqual([false, true]);
    expect(second.file).toBe(first.file);
    expect(readdirSync(cache).sort()).toEqual(
      [first.file, first.file.replace('.bin', '.json')].sort(),
    );
    // Another float type is another file.
    expect(
      packTextWeights(openCheckpoint(quantized), { type: 'float16', cacheDir: cache }).file,
    ).not.toBe(first.file);

    const readOnly = fresh('read-only');
    convertCheckpoint({ from: tiny, to: readOnly, quantize: { bits: 8, groupSize: 32 } });
    chmodSync(readOnly, 0o555);
    try {
      const dir = resolveWeightCacheDir(readOnly);
      // root ignores permission bits; then the checkpoint's own folder is writable after all.
      if (process.getuid?.() !== 0) expect(dir).toBe(join(tmpdir(), 'loupe-weight-cache'));
      else
        expect([join(readOnly, '.loupe-cache'), join(tmpdir(), 'loupe-weight-cache')]).toContain(
          dir,
        );
    } finally {
      chmodSync(readOnly, 0o755);
    }
    expect(() => resolveWeightCacheDir(tiny, join(tiny, 'config.json', 'cache'))).toThrow(
      /weight cache folder .* cannot be written/,
    );
  });
});

describe('a GPTQ checkpoint whose float tensors are float16 (as most published ones)', () => {
  it('runs its text graph in float32 and agrees with the float32-stored one', async () => {
    const run = async (dtype: 'float32' | 'float16') => {
      const dir = fresh(`q4-${dtype}`);
      convertCheckpoint({ from: tiny, to: dir, dtype, quantize: { bits: 4, groupSize: 32 } });
      const checkpoint = openCheckpoint(dir);
      expect(checkpoint.dtype).toBe(dtype === 'float32' ? 'F32' : 'F16');
      const model = await loadTextModel(checkpoint, { session: { intraOpThreads: 1 } });
      try {
        expect(model.graph.type).toBe('float32');
        return (
          await generateGreedy(model, [{ ids: [1, 306, 272, 284, 291] }], {
            maxNewTokens: 4,
            eosTokenIds: [],
          })
        ).sequences[0]!.prefillLogits;
      } finally {
        await model.release();
      }
    };
    const [f32, f16] = [await run('float32'), await run('float16')];
    let max = 0;
    for (let i = 0; i < f32.length; i++) max = Math.max(max, Math.abs(f32[i]! - f16[i]!));
    // Only the float16 rounding of the norms, lm_head and embeddings differs.
    expect(max).toBeLessThan(1e-2);
  });
});

describe('int8 activations (MatMulNBits accuracy level 4)', () => {
  it('agrees with float activations on the prefill and reports the measured agreement', async () => {
    const dir = fresh('q8');
    convertCheckpoint({ from: tiny, to: dir, quantize: { bits: 8, groupSize: 32, sym: true } });
    const checkpoint = openCheckpoint(dir);
    const prompt = { ids: [1, 306, 272, 284, 291, 332, 421, 17, 95, 230] };
    const eos = eosTokenIds(dir);
    const run = async (int8Activations: boolean) => {
      const model = await loadTextModel(checkpoint, {
        session: { intraOpThreads: 1 },
        quantized: { int8Activations, weightCacheDir: fresh('cache') },
      });
      try {
        return (await generateGreedy(model, [prompt], { maxNewTokens: 16, eosTokenIds: eos }))
          .sequences[0]!;
      } finally {
        await model.release();
      }
    };
    const [float, int8] = [await run(false), await run(true)];
    let max = 0;
    let range = 0;
    for (let i = 0; i < float.prefillLogits.length; i++) {
      max = Math.max(max, Math.abs(float.prefillLogits[i]! - int8.prefillLogits[i]!));
      range = Math.max(range, Math.abs(float.prefillLogits[i]!));
    }
    const same = float.generatedIds.filter((id, i) => int8.generatedIds[i] === id).length;
    console.log(
      `int8 activations: prefill max |Δ| ${max.toExponential(2)} (logits up to ${range.toFixed(3)}), ${same}/16 greedy tokens equal`,
    );
    expect(max).toBeGreaterThan(0); // a different computation...
    expect(max).toBeLessThan(0.05 * range); // ...within 5% of the logits' range
  });
});

describe('convertCheckpoint --bits: bad input leaves nothing behind', () => {
  const siblings = (out: string) =>
    readdirSync(dirname(out)).filter((f) => f.includes(`${out.split('/').at(-1)}.partial`));

  it('refuses a non-Idefics2 checkpoint, an unknown dtype, an unwritable output', () => {
    const llama = fresh('llama');
    convertCheckpoint({ from: tiny, to: llama, dtype: 'float32' });
    const config = JSON.parse(readFileSync(join(llama, 'config.json'), 'utf8'));
    writeFileSync(join(llama, 'config.json'), JSON.stringify({ ...config, model_type: 'llama' }));
    const out = fresh('out');
    expect(() => convertCheckpoint({ from: llama, to: out, quantize: { bits: 4 } })).toThrow(
      /model_type` must be one of "idefics2", got "llama"/,
    );
    expect(existsSync(out)).toBe(false);
    expect(() =>
      convertCheckpoint({ from: tiny, to: out, dtype: 'bfloat16' as 'float32' }),
    ).toThrow(/--dtype must be float32 or float16, got "bfloat16"/);
    const blocked = join(tiny, 'config.json', 'out');
    expect(() =>
      convertCheckpoint({ from: tiny, to: blocked, quantize: { bits: 4, groupSize: 32 } }),
    ).toThrow(ConvertError);
    expect(() =>
      convertCheckpoint({ from: tiny, to: blocked, quantize: { bits: 4, groupSize: 32 } }),
    ).toThrow(/cannot write the output next to/);
  });

  it('refuses a group size that does not divide an input dimension, naming the layer', () => {
    const out = fresh('out');
    expect(() =>
      convertCheckpoint({ from: tiny, to: out, quantize: { bits: 4, groupSize: 128 } }),
    ).toThrow(
      /model\.text_model\.layers\.0\.self_attn\.q_proj: group size 128 does not divide its input dimension 64/,
    );
    expect(existsSync(out)).toBe(false);
    expect(siblings(out)).toEqual([]);
  });

  it('a truncated source is refused before anything is written', () => {
    const broken = fresh('broken');
    convertCheckpoint({ from: tiny, to: broken, dtype: 'float32' });
    const file = join(broken, 'model.safetensors');
    truncateSync(file, Math.floor(readFileSync(file).length * 0.6));
    const out = fresh('out');
    expect(() =>
      convertCheckpoint({ from: broken, to: out, quantize: { bits: 4, groupSize: 32 } }),
    ).toThrow(CheckpointError);
    expect(existsSync(out)).toBe(false);
    expect(siblings(out)).toEqual([]);
  });

  it('a failure mid-way leaves no output and no partial folder', () => {
    const out = fresh('out');
    let calls = 0;
    const onProgress = () => {
      if (++calls === 5) throw new Error('interrupted after 5 tensors');
    };
    expect(() =>
      convertCheckpoint({ from: tiny, to: out, quantize: { bits: 4, groupSize: 32 }, onProgress }),
    ).toThrow(/interrupted after 5 tensors/);
    expect(calls).toBe(5);
    expect(existsSync(out)).toBe(false);
    expect(siblings(out)).toEqual([]);
  });

  it('refuses a non-empty output without force, replaces it with force, refuses re-quantizing', () => {
    const out = fresh('out');
    convertCheckpoint({ from: tiny, to: out, quantize: { bits: 4, groupSize: 32 } });
    expect(() =>
      convertCheckpoint({ from: tiny, to: out, quantize: { bits: 8, groupSize: 32 } }),
    ).toThrow(/exists and is not empty \(pass --force to replace it\)/);
    expect(openCheckpoint(out).quantization?.bits).toBe(4);
    const progress: number[] = [];
    convertCheckpoint({
      from: tiny,
      to: out,
      quantize: { bits: 8, groupSize: 32 },
      force: true,
      onProgress: (done) => progress.push(done),
    });
    expect(openCheckpoint(out).quantization?.bits).toBe(8);
    expect(progress.length).toBeGreaterThan(1);
    expect(() =>
      convertCheckpoint({ from: out, to: fresh('again'), quantize: { bits: 4 } }),
    ).toThrow(/is already quantized \(8-bit GPTQ\)/);
  });
});
