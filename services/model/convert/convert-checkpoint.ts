// `loupe convert`: rewrites a checkpoint's weights in float32 or float16, one tensor at a time
// (a 33 GB checkpoint never sits in memory), for execution providers that cannot run its dtype
// directly (bfloat16 on CPU). Shard names, the index and every other file carry over.
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { openCheckpoint } from '../checkpoint/index.js';
import {
  encodeSafetensorsLayout,
  readSafetensorsHeader,
  type SafetensorsDtype,
  type SafetensorsEntry,
} from '../safetensors/index.js';
import { bfloat16ToFloat32, float16ToFloat32, float32ToFloat16 } from './half.js';

export type TargetDtype = 'float32' | 'float16';

const TARGET: Record<TargetDtype, SafetensorsDtype> = { float32: 'F32', float16: 'F16' };
const FLOATS: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16'];

export class ConvertError extends Error {
  override readonly name = 'ConvertError';
}

export interface ConvertOptions {
  from: string;
  to: string;
  dtype: TargetDtype;
}

export interface ConvertSummary {
  files: string[];
  tensors: number;
  /** Bytes of tensor data written. */
  bytes: number;
}

/** Converts the elements of one floating-point tensor. */
function convertTensor(source: Buffer, from: SafetensorsDtype, to: SafetensorsDtype): Uint8Array {
  if (from === to) return source;
  const n = source.byteLength / (from === 'F32' ? 4 : 2);
  const read =
    from === 'F32'
      ? (() => {
          const values = new Float32Array(source.buffer, source.byteOffset, n);
          return (i: number) => values[i]!;
        })()
      : (() => {
          const bits = new Uint16Array(source.buffer, source.byteOffset, n);
          const widen = from === 'BF16' ? bfloat16ToFloat32 : float16ToFloat32;
          return (i: number) => widen(bits[i]!);
        })();
  if (to === 'F32') {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = read(i);
    return new Uint8Array(out.buffer);
  }
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = float32ToFloat16(read(i));
  return new Uint8Array(out.buffer);
}

function readRange(fd: number, offset: number, length: number): Buffer {
  // 8-byte aligned so typed-array views over it are valid.
  const buffer = Buffer.from(new ArrayBuffer(length));
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buffer, done, length - done, offset + done);
    if (n === 0)
      throw new ConvertError(`unexpected end of file reading ${length} bytes at ${offset}`);
    done += n;
  }
  return buffer;
}

function convertFile(
  source: string,
  target: string,
  dtype: SafetensorsDtype,
): { tensors: number; bytes: number } {
  const header = readSafetensorsHeader(source);
  const entries = Object.entries(header.tensors);
  const outDtype = (entry: SafetensorsEntry) =>
    FLOATS.includes(entry.dtype) ? dtype : entry.dtype;
  const layout = Object.fromEntries(
    entries.map(([name, e]) => [name, { dtype: outDtype(e), shape: e.shape }]),
  );
  const {
    header: outHeader,
    order,
    dataLength,
  } = encodeSafetensorsLayout(layout, { metadata: header.metadata });
  const input = openSync(source, 'r');
  const output = openSync(target, 'w');
  try {
    writeAll(output, outHeader);
    for (const name of order) {
      const entry = header.tensors[name]!;
      const bytes = readRange(input, entry.offset, entry.byteLength);
      writeAll(
        output,
        FLOATS.includes(entry.dtype) ? convertTensor(bytes, entry.dtype, dtype) : bytes,
      );
    }
  } finally {
    closeSync(input);
    closeSync(output);
  }
  return { tensors: entries.length, bytes: dataLength };
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
}

export function convertCheckpoint({ from, to, dtype }: ConvertOptions): ConvertSummary {
  if (!(dtype in TARGET))
    throw new ConvertError(`--dtype must be float32 or float16, got "${dtype}"`);
  // Validates the config and every tensor before anything is written.
  const checkpoint = openCheckpoint(from);
  if (existsSync(to) && readdirSync(to).length > 0)
    throw new ConvertError(`${to} exists and is not empty`);
  mkdirSync(to, { recursive: true });

  const target = TARGET[dtype];
  const weightFiles = [...new Set([...checkpoint.tensors.values()].map((t) => t.file))];
  const summary: ConvertSummary = { files: [], tensors: 0, bytes: 0 };
  for (const file of weightFiles) {
    const name = file.slice(from.length).replace(/^[/\\]/, '');
    const { tensors, bytes } = convertFile(file, join(to, name), target);
    summary.files.push(name);
    summary.tensors += tensors;
    summary.bytes += bytes;
  }
  for (const name of readdirSync(from)) {
    const path = join(from, name);
    if (summary.files.includes(name) || !statSync(path).isFile()) continue;
    if (name === 'model.safetensors.index.json') {
      const index = JSON.parse(readFileSync(path, 'utf8')) as {
        metadata?: Record<string, unknown>;
      };
      index.metadata = { ...index.metadata, total_size: summary.bytes };
      writeFileSync(join(to, name), JSON.stringify(index, null, 2) + '\n');
    } else if (name === 'config.json') {
      const config = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
      config.torch_dtype = dtype;
      writeFileSync(join(to, name), JSON.stringify(config, null, 2) + '\n');
    } else if (!name.endsWith('.safetensors')) {
      copyFileSync(path, join(to, name));
    }
  }
  return summary;
}
