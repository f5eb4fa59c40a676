// Writes an Idefics2 checkpoint directory of seeded random weights for a config, in one file
// or across shards, for tests of checkpoint handling (not of the model's numerics).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  elementCount,
  expectedTensors,
  parseIdefics2Config,
  seededUniform,
  writeSafetensors,
  type TensorToWrite,
} from '../../services/model/index.js';

export interface TinyCheckpointOptions {
  shards?: number;
  dtype?: 'F32' | 'F16' | 'BF16';
  seed?: number;
  /** Changes the expected tensor shapes before writing (to make broken checkpoints). */
  edit?: (shapes: Map<string, number[]>) => void;
}

export function writeTinyCheckpoint(
  config: Record<string, unknown>,
  { shards = 1, dtype = 'F32', seed = 1, edit }: TinyCheckpointOptions = {},
): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-ckpt-'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const shapes = expectedTensors(parseIdefics2Config(config));
  edit?.(shapes);
  const next = seededUniform(seed);
  const names = [...shapes.keys()];
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file =
      shards === 1 ? 'model.safetensors' : `model-0000${s + 1}-of-0000${shards}.safetensors`;
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of names.filter((_, i) => i % shards === s)) {
      const shape = shapes.get(name)!;
      const n = elementCount(shape);
      let data: ArrayBufferView;
      if (dtype === 'F32') {
        data = Float32Array.from({ length: n }, () => (next() - 0.5) * 0.2);
      } else {
        // Random finite half-precision bit patterns in roughly [-2, 2].
        data = Uint16Array.from({ length: n }, () => {
          const sign = next() < 0.5 ? 0x8000 : 0;
          return dtype === 'BF16'
            ? sign | (0x3c00 + Math.floor(next() * 0x400))
            : sign | Math.floor(next() * 0x4000);
        });
      }
      tensors[name] = { dtype, shape, data };
      weightMap[name] = file;
    }
    writeSafetensors(join(dir, file), tensors, { metadata: { format: 'pt' } });
  }
  if (shards > 1) {
    writeFileSync(
      join(dir, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
    );
  }
  return dir;
}
