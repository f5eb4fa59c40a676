// Graphs built with GraphBuilder, run by onnxruntime-node on CPU, checked against plain
// JavaScript. Weights live in a safetensors file and are read in place as external data.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readSafetensorsHeader, writeSafetensors } from '../safetensors/index.js';
import * as attr from './attribute.js';
import { float, int } from './attribute.js';
import { elementTypeOfSafetensors } from './element-type.js';
import { GraphBuilder } from './graph-builder.js';
import { createSession, makeTensor, readOutput } from './session.js';

const dir = mkdtempSync(join(tmpdir(), 'loupe-onnx-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Deterministic values in [-1, 1) that are multiples of 1/64, so exact in float16 too. */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s >>> 16) % 128) / 64 - 1;
  }
  return out;
}

/** float32 -> float16 bits, for values exactly representable in float16 (normal or zero). */
function toHalfBits(values: Float32Array): Uint16Array {
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  return Uint16Array.from(values, (v) => {
    f[0] = v;
    const bits = u[0]!;
    const sign = (bits >>> 16) & 0x8000;
    if ((bits & 0x7fffffff) === 0) return sign;
    const exp = ((bits >>> 23) & 0xff) - 127 + 15;
    return sign | (exp << 10) | ((bits >>> 13) & 0x3ff);
  });
}

/** y[r, o] = sum_i x[r, i] * w[o, i] + b[o]  (w stored [out, in], as Hugging Face does) */
function linear(x: Float32Array, w: Float32Array, b: Float32Array, inF: number): Float32Array {
  const rows = x.length / inF;
  const outF = b.length;
  const y = new Float32Array(rows * outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let acc = b[o]!;
      for (let i = 0; i < inF; i++) acc += x[r * inF + i]! * w[o * inF + i]!;
      y[r * outF + o] = acc;
    }
  }
  return y;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const IN = 8;
const OUT = 5;
const X_DIMS = [2, 3, IN]; // N-D activations: [batch, seq, in]
const x = values(2 * 3 * IN, 1);
const w = values(OUT * IN, 2);
const b = values(OUT, 3);

/** Writes the weights, builds `Y = FusedMatMul(X, W^T) + B` over them, returns the model path. */
function linearModel(name: string, weightDtype: 'F32' | 'F16'): string {
  const file = `${name}.safetensors`;
  writeSafetensors(join(dir, file), {
    // Something before the weights, so their offsets are not the start of the data.
    'other.bias': { dtype: 'F32', shape: [3], data: new Float32Array([7, 8, 9]) },
    'proj.weight': {
      dtype: weightDtype,
      shape: [OUT, IN],
      data: weightDtype === 'F32' ? w : toHalfBits(w),
    },
    'proj.bias': { dtype: 'F32', shape: [OUT], data: b },
  });
  const header = readSafetensorsHeader(join(dir, file));
  const g = new GraphBuilder({ name });
  const X = g.input('X', 'float32', ['batch', 'seq', IN]);
  const external = (tensorName: string) => {
    const entry = header.tensors[tensorName]!;
    return g.externalInitializer(tensorName, elementTypeOfSafetensors(entry.dtype), entry.shape, {
      location: file,
      offset: entry.offset,
      length: entry.byteLength,
    });
  };
  let W = external('proj.weight');
  if (weightDtype === 'F16') {
    W = g.node1({ opType: 'Cast', inputs: [W], attributes: { to: int(1) } });
  }
  const B = external('proj.bias');
  const XW = g.node1({
    opType: 'FusedMatMul',
    domain: 'com.microsoft',
    inputs: [X, W],
    attributes: { transB: int(1), alpha: float(1) },
  });
  g.node1({ opType: 'Add', inputs: [XW, B], output: 'Y' });
  g.output('Y', 'float32', ['batch', 'seq', OUT]);
  const path = join(dir, `${name}.onnx`);
  g.writeModel(path);
  return path;
}

describe('onnxruntime-node sessions over GraphBuilder models', () => {
  it('runs FusedMatMul(transB=1) + Add with float32 weights read in place from safetensors', async () => {
    const session = await createSession(linearModel('linear_f32', 'F32'), { intraOpThreads: 1 });
    try {
      expect(session.inputNames).toEqual(['X']);
      const out = await session.run({ X: makeTensor('float32', x, X_DIMS) });
      const y = readOutput(out, 'Y', 'float32');
      expect(y.dims).toEqual([2, 3, OUT]);
      expect(maxAbsDiff(y.data, linear(x, w, b, IN))).toBeLessThanOrEqual(1e-5);
    } finally {
      await session.release();
    }
  });

  it('casts a float16 weight to float32 before the matmul', async () => {
    const session = await createSession(linearModel('linear_f16', 'F16'), {
      graphOptimizationLevel: 'basic',
    });
    try {
      const out = await session.run({ X: makeTensor('float32', x, X_DIMS) });
      // The weights are exact in float16, so the result matches float32 math.
      expect(
        maxAbsDiff(readOutput(out, 'Y', 'float32').data, linear(x, w, b, IN)),
      ).toBeLessThanOrEqual(1e-5);
    } finally {
      await session.release();
    }
  });

  it('runs LayerNormalization, SimplifiedLayerNormalization (RMSNorm) and Softmax', async () => {
    const H = 6;
    const g = new GraphBuilder({ name: 'norms' });
    const X = g.input('X', 'float32', ['rows', H]);
    const gamma = g.initializer('gamma', 'float32', [H], values(H, 4));
    const beta = g.initializer('beta', 'float32', [H], values(H, 5));
    g.node1({
      opType: 'LayerNormalization',
      inputs: [X, gamma, beta],
      attributes: { axis: int(-1), epsilon: float(1e-5) },
      output: 'LN',
    });
    g.node1({
      opType: 'SimplifiedLayerNormalization',
      inputs: [X, gamma],
      attributes: { axis: int(-1), epsilon: float(1e-6) },
      output: 'RMS',
    });
    g.node1({ opType: 'Softmax', inputs: [X], attributes: { axis: int(-1) }, output: 'SM' });
    for (const name of ['LN', 'RMS', 'SM']) g.output(name, 'float32', ['rows', H]);
    const path = join(dir, 'norms.onnx');
    g.writeModel(path);

    const rows = 3;
    const xs = values(rows * H, 6);
    const gm = values(H, 4);
    const bt = values(H, 5);
    const ln = new Float32Array(rows * H);
    const rms = new Float32Array(rows * H);
    const sm = new Float32Array(rows * H);
    for (let r = 0; r < rows; r++) {
      const row = xs.subarray(r * H, (r + 1) * H);
      const mean = row.reduce((s, v) => s + v, 0) / H;
      const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / H;
      const meanSquare = row.reduce((s, v) => s + v * v, 0) / H;
      const max = Math.max(...row);
      const expSum = row.reduce((s, v) => s + Math.exp(v - max), 0);
      for (let i = 0; i < H; i++) {
        ln[r * H + i] = ((row[i]! - mean) / Math.sqrt(variance + 1e-5)) * gm[i]! + bt[i]!;
        rms[r * H + i] = (row[i]! / Math.sqrt(meanSquare + 1e-6)) * gm[i]!;
        sm[r * H + i] = Math.exp(row[i]! - max) / expSum;
      }
    }
    const session = await createSession(path);
    try {
      const out = await session.run({ X: makeTensor('float32', xs, [rows, H]) });
      expect(maxAbsDiff(readOutput(out, 'LN', 'float32').data, ln)).toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff(readOutput(out, 'RMS', 'float32').data, rms)).toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff(readOutput(out, 'SM', 'float32').data, sm)).toBeLessThanOrEqual(1e-6);
    } finally {
      await session.release();
    }
  });

  it('runs If branches that read values of the enclosing graph', async () => {
    const g = new GraphBuilder({ name: 'if' });
    const x = g.input('x', 'float32', [3]);
    const flag = g.input('flag', 'bool', []);
    const two = g.initializer('two', 'float32', [], Float32Array.of(2));
    const branch = (name: string, opType: string) => {
      const sub = g.subgraph(name);
      sub.output(sub.node1({ opType, inputs: [x, two] }), 'float32', [3]);
      return attr.graph(sub.toGraph());
    };
    g.node1({
      opType: 'If',
      inputs: [flag],
      output: 'y',
      attributes: { then_branch: branch('times', 'Mul'), else_branch: branch('plus', 'Add') },
    });
    g.output('y', 'float32', [3]);
    expect(() => g.subgraph('s').toModel()).toThrow('is a subgraph');
    const path = join(dir, 'if.onnx');
    g.writeModel(path);
    const session = await createSession(path, { intraOpThreads: 1 });
    try {
      for (const [on, expected] of [
        [1, [2, 4, 6]],
        [0, [3, 4, 5]],
      ] as const) {
        const out = await session.run({
          x: makeTensor('float32', Float32Array.of(1, 2, 3), [3]),
          flag: makeTensor('bool', Uint8Array.of(on), []),
        });
        expect([...readOutput(out, 'y', 'float32').data]).toEqual(expected);
      }
    } finally {
      await session.release();
    }
  });

  it('fails with a message naming a missing external data file', async () => {
    const g = new GraphBuilder({ name: 'missing' });
    const X = g.input('X', 'float32', [2]);
    const W = g.externalInitializer('W', 'float32', [2], {
      location: 'no-such-weights.safetensors',
      offset: 0,
      length: 8,
    });
    g.node1({ opType: 'Add', inputs: [X, W], output: 'Y' });
    g.output('Y', 'float32', [2]);
    const path = join(dir, 'missing.onnx');
    g.writeModel(path);
    await expect(createSession(path)).rejects.toThrow(/no-such-weights\.safetensors/);
  });

  it('refuses external data reached through a symlink that leaves the model directory', async () => {
    // The Hugging Face hub cache is laid out this way (snapshots/<rev>/x.safetensors ->
    // ../../blobs/<sha>): a graph written into the snapshot folder cannot use its weights;
    // write it beside the real file (realpath) instead.
    mkdirSync(join(dir, 'snapshot'));
    mkdirSync(join(dir, 'blobs'));
    writeFileSync(join(dir, 'blobs', 'abc123'), Buffer.alloc(8));
    symlinkSync('../blobs/abc123', join(dir, 'snapshot', 'w.safetensors'));
    const g = new GraphBuilder({ name: 'symlinked' });
    const X = g.input('X', 'float32', [2]);
    const W = g.externalInitializer('W', 'float32', [2], {
      location: 'w.safetensors',
      offset: 0,
      length: 8,
    });
    g.node1({ opType: 'Add', inputs: [X, W], output: 'Y' });
    g.output('Y', 'float32', [2]);
    g.writeModel(join(dir, 'snapshot', 'model.onnx'));
    await expect(createSession(join(dir, 'snapshot', 'model.onnx'))).rejects.toThrow(
      /escapes model directory/,
    );
  });

  it('fails with a message naming a missing model file', async () => {
    await expect(createSession(join(dir, 'absent.onnx'))).rejects.toThrow(/absent\.onnx/);
  });
});
