// A Hugging Face Idefics2 checkpoint directory: its resolved config and where every tensor
// lives (file, dtype, shape, byte range), read from the safetensors headers only, so the
// graphs can reference the weights in place. Every problem is reported at open time, naming
// the file, the tensor and both shapes.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseIdefics2Config, type Idefics2Config } from '../config/index.js';
import {
  gptqShapes,
  parseQuantizationConfig,
  type QuantizationConfig,
  quantizedLinears,
} from '../quant/quantization-config.js';
import { readSafetensorsHeader, type SafetensorsDtype } from '../safetensors/index.js';
import { expectedTensors } from './expected-tensors.js';

/** Weight dtypes Loupe runs (bfloat16 on CPU after `loupe convert`). */
export const WEIGHT_DTYPES: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16'];

export interface TensorLocation {
  /** Absolute path of the safetensors file. */
  file: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the first element in `file`. */
  offset: number;
  byteLength: number;
}

export interface Checkpoint {
  dir: string;
  config: Idefics2Config;
  /** Every expected tensor, by its stored name. */
  tensors: ReadonlyMap<string, TensorLocation>;
  /** The float weights' dtype (the most common one when they are mixed). */
  dtype: SafetensorsDtype;
  /**
   * GPTQ quantization (config.json's `quantization_config`), or null for a float checkpoint.
   * The quantized linears' `.weight` is then absent from `tensors`; their `.qweight`,
   * `.qzeros`, `.scales` and `.g_idx` are there instead (docs/quantization.md).
   */
  quantization: QuantizationConfig | null;
}

export class CheckpointError extends Error {
  override readonly name = 'CheckpointError';
}

function readJson(path: string): unknown {
  if (!existsSync(path)) throw new CheckpointError(`${path} is missing`);
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new CheckpointError(`${path} is not valid JSON: ${(error as Error).message}`);
  }
}

/** The safetensors files that hold the weights: one file, or the shards an index names. */
function weightFiles(dir: string): {
  files: string[];
  index?: { path: string; map: Record<string, string> };
} {
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return { files: [single] };
  const indexPath = join(dir, 'model.safetensors.index.json');
  if (!existsSync(indexPath)) {
    throw new CheckpointError(
      `${dir} has no weights: neither model.safetensors nor model.safetensors.index.json exists`,
    );
  }
  const index = readJson(indexPath) as { weight_map?: unknown };
  const map = index.weight_map;
  if (
    typeof map !== 'object' ||
    map === null ||
    Object.values(map).some((f) => typeof f !== 'string')
  ) {
    throw new CheckpointError(`${indexPath}: \`weight_map\` must map tensor names to file names`);
  }
  const files = [...new Set(Object.values(map as Record<string, string>))].map((name) =>
    join(dir, name),
  );
  for (const file of files) {
    if (!existsSync(file)) throw new CheckpointError(`${file} is missing (named in ${indexPath})`);
  }
  return { files, index: { path: indexPath, map: map as Record<string, string> } };
}

export function openCheckpoint(dir: string): Checkpoint {
  const configPath = join(dir, 'config.json');
  let config: Idefics2Config;
  let quantization: QuantizationConfig | null;
  try {
    const raw = readJson(configPath);
    config = parseIdefics2Config(raw, configPath);
    quantization = parseQuantizationConfig(raw, configPath);
  } catch (error) {
    throw error instanceof CheckpointError ? error : new CheckpointError((error as Error).message);
  }

  const { files, index } = weightFiles(dir);
  const stored = new Map<string, TensorLocation>();
  for (const file of files) {
    let header;
    try {
      header = readSafetensorsHeader(file);
    } catch (error) {
      throw new CheckpointError((error as Error).message);
    }
    for (const [name, entry] of Object.entries(header.tensors)) {
      const expectedFile = index?.map[name];
      if (index && expectedFile !== undefined && join(dir, expectedFile) !== file) continue; // the index decides
      stored.set(name, {
        file,
        dtype: entry.dtype,
        shape: entry.shape,
        offset: entry.offset,
        byteLength: entry.byteLength,
      });
    }
  }

  const tensors = new Map<string, TensorLocation>();
  const dtypeCounts = new Map<SafetensorsDtype, number>();
  const floats = expectedTensors(config);
  if (quantization) {
    const tied = config.tieWordEmbeddings || config.text.tieWordEmbeddings;
    if (quantization.lmHead && tied) {
      throw new CheckpointError(
        `${configPath}: quantization_config.lm_head is true but the embeddings are tied (lm_head is embed_tokens, which stays float)`,
      );
    }
    for (const linear of quantizedLinears(config, quantization)) {
      floats.delete(`${linear.name}.weight`);
      const { k } = linear;
      if (k % linear.groupSize !== 0) {
        throw new CheckpointError(
          `${configPath}: group_size ${linear.groupSize} does not divide ${linear.name}'s input dimension ${k}`,
        );
      }
      const shapes = gptqShapes(linear, linear);
      const parts: [string, readonly number[], readonly SafetensorsDtype[], boolean][] = [
        ['qweight', shapes.qweight, ['I32'], true],
        ['qzeros', shapes.qzeros, ['I32'], true],
        ['scales', shapes.scales, ['F16', 'F32'], true],
        ['g_idx', shapes.g_idx, ['I32'], false],
      ];
      for (const [part, shape, dtypes, required] of parts) {
        const name = `${linear.name}.${part}`;
        const location = stored.get(name);
        if (!location) {
          if (!required) continue;
          throw new CheckpointError(
            `tensor ${name} [${shape.join(', ')}] is missing from ${index ? `${index.path} (weight_map) and its shards` : files[0]} (a ${linear.bits}-bit GPTQ checkpoint stores qweight, qzeros, scales and g_idx for each quantized linear)`,
          );
        }
        checkShape(name, location, shape);
        if (!dtypes.includes(location.dtype)) {
          throw new CheckpointError(
            `tensor ${name} in ${location.file} is ${location.dtype}; GPTQ stores it as ${dtypes.join(' or ')}`,
          );
        }
        tensors.set(name, location);
      }
    }
  }
  for (const [name, shape] of floats) {
    const location = stored.get(name);
    if (!location) {
      const where = index ? `${index.path} (weight_map) and its shards` : files[0];
      throw new CheckpointError(`tensor ${name} [${shape.join(', ')}] is missing from ${where}`);
    }
    checkShape(name, location, shape);
    if (!WEIGHT_DTYPES.includes(location.dtype)) {
      throw new CheckpointError(
        `tensor ${name} in ${location.file} is ${location.dtype}; weights must be one of ${WEIGHT_DTYPES.join(', ')}`,
      );
    }
    tensors.set(name, location);
    dtypeCounts.set(location.dtype, (dtypeCounts.get(location.dtype) ?? 0) + 1);
  }
  const dtype = [...dtypeCounts.entries()].sort((a, b) => b[1] - a[1])[0]![0];
  return { dir, config, tensors, dtype, quantization };
}

function checkShape(name: string, location: TensorLocation, shape: readonly number[]): void {
  if (location.shape.length !== shape.length || location.shape.some((d, i) => d !== shape[i])) {
    throw new CheckpointError(
      `tensor ${name} in ${location.file} has shape [${location.shape.join(', ')}], but config.json implies [${shape.join(', ')}]`,
    );
  }
}
