// A graph's weights of a GPTQ checkpoint (the text graph's, and the vision graph's when its
// linears are quantized too), rewritten once into a cache file that ONNX Runtime reads as
// external data.
//
// Why a file: MatMulNBits wants each weight transposed relative to GPTQ's qweight (see
// gptq.ts), so the checkpoint's bytes cannot be referenced in place as float weights are; an
// in-memory model cannot hold them either (a serialized ONNX model stops at 2 GB, and an 8B
// model's 4-bit text weights are 3.6 GB); and ONNX Runtime resolves every external data
// location against one folder. So the cache file holds everything the text graph reads:
// the repacked quantized linears, and the float tensors (norms, an unquantized lm_head) in
// the graph's float type. Written once, reused while the checkpoint's files are unchanged.
//
//   <cache dir>/<graph>-<key>.bin    tensors, each at a 4 KiB-aligned offset (graph: text, vision)
//   <cache dir>/<graph>-<key>.json   the table: name -> type, dims, offset, length
//
// <key> hashes the format version, the graph's float type, the quantization config and, for
// every source tensor, its file (path, size, mtime) and byte range. The .json is renamed into
// place after the .bin, so a reader that finds it finds a complete file; two processes
// packing at once each write their own temporary files and the last rename wins.
import { createHash, randomBytes } from 'node:crypto';
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Checkpoint, TensorLocation } from '../checkpoint/index.js';
import { convertTensor, readRange } from '../convert/tensor-bytes.js';
import { attr, type ElementType, type GraphBuilder, type GraphFloatType } from '../onnx/index.js';
import { GptqLayoutError, repackForMatMulNBits } from './gptq.js';
import { type QuantizedLinearSpec, textLinears, visionLinears } from './quantization-config.js';

/** Bumped whenever what the cache file holds changes. */
const FORMAT_VERSION = 1;
const ALIGN = 4096;

export interface PackedTensor {
  type: ElementType;
  dims: number[];
  /** Byte offset in the cache file. */
  offset: number;
  length: number;
}

export interface PackedWeights {
  /** The folder ONNX Runtime resolves `file` against. */
  dir: string;
  /** File name of the tensors, relative to `dir`. */
  file: string;
  tensors: ReadonlyMap<string, PackedTensor>;
  /** Bytes of tensor data. */
  bytes: number;
  /** Whether an existing cache file was used. */
  reused: boolean;
  /** The quantized linears, by module name. */
  quantized: ReadonlyMap<string, QuantizedLinearSpec>;
}

/** Which graph's weights: the text decoder's, or the vision tower's with the connector. */
export type PackedGraph = 'text' | 'vision';

/** Names of the MatMulNBits inputs of quantized linear `name` in the cache file. */
export const packedNames = (name: string) => ({
  b: `${name}.nbits_b`,
  scales: `${name}.nbits_scales`,
  zeroPoints: `${name}.nbits_zero_points`,
});

export class WeightCacheError extends Error {
  override readonly name = 'WeightCacheError';
}

/**
 * Where the packed weights go: `explicit` when given (LOUPE_WEIGHT_CACHE_DIR), else
 * `.loupe-cache` inside the checkpoint when that folder can be written, else a folder under
 * the system's temporary directory (read-only checkpoints: hub snapshots, read-only volumes).
 */
export function resolveWeightCacheDir(checkpointDir: string, explicit?: string): string {
  if (explicit !== undefined && explicit !== '') {
    try {
      mkdirSync(explicit, { recursive: true });
      accessSync(explicit, constants.W_OK);
    } catch (error) {
      throw new WeightCacheError(
        `weight cache folder ${explicit} cannot be written: ${(error as Error).message}`,
      );
    }
    return explicit;
  }
  const beside = join(checkpointDir, '.loupe-cache');
  try {
    mkdirSync(beside, { recursive: true });
    accessSync(beside, constants.W_OK);
    return beside;
  } catch {
    const fallback = join(tmpdir(), 'loupe-weight-cache');
    mkdirSync(fallback, { recursive: true });
    return fallback;
  }
}

const QUANT_PARTS = ['.qweight', '.qzeros', '.scales', '.g_idx'];

/** The float tensors a graph reads (everything of its part that is not quantized). */
function floatTensorNames(
  checkpoint: Checkpoint,
  graph: PackedGraph,
  quantized: ReadonlyMap<string, QuantizedLinearSpec>,
): string[] {
  const isQuantPart = (name: string) =>
    QUANT_PARTS.some((p) => name.endsWith(p) && quantized.has(name.slice(0, -p.length)));
  if (graph === 'vision') {
    return [...checkpoint.tensors.keys()].filter(
      (name) =>
        (name.startsWith('model.vision_model.') || name.startsWith('model.connector.')) &&
        !isQuantPart(name),
    );
  }
  const tied = checkpoint.config.tieWordEmbeddings || checkpoint.config.text.tieWordEmbeddings;
  const names: string[] = [];
  for (const name of checkpoint.tensors.keys()) {
    if (!name.startsWith('model.text_model.layers.') || !name.endsWith('.weight')) continue;
    if (quantized.has(name.slice(0, -'.weight'.length))) continue;
    names.push(name);
  }
  names.push('model.text_model.norm.weight');
  if (tied) names.push('model.text_model.embed_tokens.weight');
  else if (!quantized.has('lm_head')) names.push('lm_head.weight');
  return names;
}

function cacheKey(
  checkpoint: Checkpoint,
  graph: PackedGraph,
  type: GraphFloatType,
  sources: readonly string[],
): string {
  const statCache = new Map<string, { size: number; mtimeMs: number; real: string }>();
  const entries = sources.map((name) => {
    const t = checkpoint.tensors.get(name)!;
    let s = statCache.get(t.file);
    if (!s) {
      const st = statSync(t.file);
      s = { size: st.size, mtimeMs: st.mtimeMs, real: realpathSync(t.file) };
      statCache.set(t.file, s);
    }
    return [name, s.real, s.size, s.mtimeMs, t.offset, t.byteLength, t.dtype];
  });
  return createHash('sha256')
    .update(JSON.stringify({ v: FORMAT_VERSION, graph, type, q: checkpoint.quantization, entries }))
    .digest('hex')
    .slice(0, 24);
}

function readTensor(t: TensorLocation): Buffer {
  const fd = openSync(t.file, 'r');
  try {
    return readRange(fd, t.offset, t.byteLength, {
      onShort: () =>
        new WeightCacheError(
          `${t.file} is truncated (reading ${t.byteLength} bytes at ${t.offset})`,
        ),
    });
  } finally {
    closeSync(fd);
  }
}

const view = <T extends Int32Array | Uint16Array | Float32Array>(
  make: new (b: ArrayBufferLike, o: number, n: number) => T,
  bytes: Buffer,
  size: number,
): T => new make(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);

/** The text graph's packed weights; see packWeights. */
export const packTextWeights = (
  checkpoint: Checkpoint,
  options: { type: GraphFloatType; cacheDir: string },
) => packWeights(checkpoint, { ...options, graph: 'text' });

/**
 * The packed weights of one graph of a GPTQ checkpoint in `cacheDir` (see
 * resolveWeightCacheDir), written now unless a complete file for the same sources exists.
 */
export function packWeights(
  checkpoint: Checkpoint,
  { graph, type, cacheDir }: { graph: PackedGraph; type: GraphFloatType; cacheDir: string },
): PackedWeights {
  const q = checkpoint.quantization;
  if (!q) throw new WeightCacheError(`${checkpoint.dir} is not a quantized checkpoint`);
  const linears =
    graph === 'text' ? textLinears(checkpoint.config, q) : visionLinears(checkpoint.config, q);
  const quantized = new Map(linears.map((l) => [l.name, l]));
  const floats = floatTensorNames(checkpoint, graph, quantized);
  const sources = [
    ...linears.flatMap((l) =>
      ['qweight', 'qzeros', 'scales', 'g_idx']
        .map((p) => `${l.name}.${p}`)
        .filter((n) => checkpoint.tensors.has(n)),
    ),
    ...floats,
  ];
  for (const name of floats) {
    if (!checkpoint.tensors.has(name))
      throw new WeightCacheError(`checkpoint ${checkpoint.dir} has no tensor ${name}`);
  }
  const key = cacheKey(checkpoint, graph, type, sources);
  const file = `${graph}-${key}.bin`;
  const tablePath = join(cacheDir, `${graph}-${key}.json`);
  const binPath = join(cacheDir, file);
  const existing = readTable(tablePath, binPath);
  if (existing) return { dir: cacheDir, file, ...existing, reused: true, quantized };

  mkdirSync(cacheDir, { recursive: true });
  const suffix = `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const tensors = new Map<string, PackedTensor>();
  const fd = openSync(binPath + suffix, 'w');
  let offset = 0;
  const put = (name: string, elementType: ElementType, dims: number[], data: Uint8Array) => {
    offset = Math.ceil(offset / ALIGN) * ALIGN;
    let done = 0;
    while (done < data.byteLength)
      done += writeSync(fd, data, done, data.byteLength - done, offset + done);
    tensors.set(name, { type: elementType, dims, offset, length: data.byteLength });
    offset += data.byteLength;
  };
  try {
    for (const linear of linears) packLinear(checkpoint, linear, type, put);
    for (const name of floats) {
      const t = checkpoint.tensors.get(name)!;
      put(
        name,
        type,
        [...t.shape],
        convertTensor(readTensor(t), t.dtype, type === 'float32' ? 'F32' : 'F16'),
      );
    }
    closeSync(fd);
    renameSync(binPath + suffix, binPath);
    const table = { version: FORMAT_VERSION, bytes: offset, tensors: Object.fromEntries(tensors) };
    writeFileSync(tablePath + suffix, JSON.stringify(table));
    renameSync(tablePath + suffix, tablePath);
  } catch (error) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    rmSync(binPath + suffix, { force: true });
    rmSync(tablePath + suffix, { force: true });
    if (error instanceof GptqLayoutError) throw new WeightCacheError(error.message);
    throw error;
  }
  return { dir: cacheDir, file, tensors, bytes: offset, reused: false, quantized };
}

function packLinear(
  checkpoint: Checkpoint,
  linear: QuantizedLinearSpec,
  type: GraphFloatType,
  put: (name: string, type: ElementType, dims: number[], data: Uint8Array) => void,
): void {
  const q = linear;
  const get = (part: string) => checkpoint.tensors.get(`${linear.name}.${part}`);
  const gIdx = get('g_idx');
  if (gIdx) {
    const values = view(Int32Array, readTensor(gIdx), 4);
    for (let i = 0; i < values.length; i++) {
      if (values[i] !== Math.floor(i / q.groupSize)) {
        throw new WeightCacheError(
          `${linear.name}.g_idx[${i}] is ${values[i]}, not ${i} / group_size ${q.groupSize}: the groups are permuted (act-order), which MatMulNBits cannot run; requantize with desc_act: false`,
        );
      }
    }
  }
  const scalesAt = get('scales')!;
  const scalesBytes = readTensor(scalesAt);
  const shape = { n: linear.n, k: linear.k, bits: q.bits, groupSize: q.groupSize };
  const packed = repackForMatMulNBits(
    {
      qweight: view(Int32Array, readTensor(get('qweight')!), 4),
      qzeros: view(Int32Array, readTensor(get('qzeros')!), 4),
      scales:
        scalesAt.dtype === 'F16'
          ? view(Uint16Array, scalesBytes, 2)
          : view(Float32Array, scalesBytes, 4),
    },
    shape,
    { scaleType: type, what: linear.name },
  );
  const names = packedNames(linear.name);
  const groups = linear.k / q.groupSize;
  put(names.b, 'uint8', [linear.n, groups, (q.groupSize * q.bits) / 8], packed.b);
  const s = packed.scales;
  put(
    names.scales,
    type,
    [linear.n * groups],
    new Uint8Array(s.buffer, s.byteOffset, s.byteLength),
  );
  if (packed.zeroPoints)
    put(names.zeroPoints, 'uint8', [packed.zeroPoints.length], packed.zeroPoints);
}

function readTable(
  tablePath: string,
  binPath: string,
): Pick<PackedWeights, 'tensors' | 'bytes'> | undefined {
  if (!existsSync(tablePath) || !existsSync(binPath)) return undefined;
  try {
    const table = JSON.parse(readFileSync(tablePath, 'utf8')) as {
      version: number;
      bytes: number;
      tensors: Record<string, PackedTensor>;
    };
    if (table.version !== FORMAT_VERSION || statSync(binPath).size < table.bytes) return undefined;
    return { tensors: new Map(Object.entries(table.tensors)), bytes: table.bytes };
  } catch {
    return undefined; // unreadable: write it again
  }
}

/** Tensor `name` of the packed file as an external initializer of `g`. */
export function packedInitializer(g: GraphBuilder, packed: PackedWeights, name: string): string {
  const p = packed.tensors.get(name);
  if (!p) throw new WeightCacheError(`packed weights ${packed.file} have no tensor ${name}`);
  return g.externalInitializer(name, p.type, p.dims, {
    location: packed.file,
    offset: p.offset,
    length: p.length,
  });
}

/**
 * x [.., K] times quantized linear `spec` -> [.., N]: a com.microsoft MatMulNBits node over
 * the packed B, scales and (when stored) zero points. accuracyLevel 0 computes in the float
 * type of x; 4 quantizes x to int8 per block.
 */
export function matMulNBits(
  g: GraphBuilder,
  x: string,
  spec: QuantizedLinearSpec,
  {
    packed,
    weight,
    accuracyLevel = 0,
    output,
  }: {
    packed: PackedWeights;
    /** Adds a packed tensor to the graph (counting its bytes) and returns its name. */
    weight: (name: string) => string;
    accuracyLevel?: 0 | 4;
    output?: string;
  },
): string {
  const names = packedNames(spec.name);
  return g.node1({
    opType: 'MatMulNBits',
    domain: 'com.microsoft',
    inputs: [
      x,
      weight(names.b),
      weight(names.scales),
      ...(packed.tensors.has(names.zeroPoints) ? [weight(names.zeroPoints)] : []),
    ],
    attributes: {
      K: attr.int(spec.k),
      N: attr.int(spec.n),
      bits: attr.int(spec.bits),
      block_size: attr.int(spec.groupSize),
      accuracy_level: attr.int(accuracyLevel),
    },
    ...(output === undefined ? {} : { output }),
  });
}
