// The checkpoint bench:decoder measures on: the `small` random checkpoint's dimensions (8
// layers of 512, 8 heads, 2 KV heads of 64) with idefics2-8b's real 32,003-token vocabulary,
// so that the LM head and the sampler cost what they cost on the real model (the tiny
// tokenizer's 461 tokens hide both). Written once under .loupe/ (about a second, 320 MB,
// float32 weights drawn by bench/model/random-gptq-checkpoint.ts) and reused while
// its marker says it is the current format.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  benchShapeConfig,
  RANDOM_GPTQ_FORMAT_VERSION,
  readBenchMarker,
  writeRandomGptqCheckpoint,
} from '../model/random-gptq-checkpoint.js';

export const WIDE_VOCAB = 32_003;
const SHAPE = 'small-32k';

export interface WideVocabCheckpoint {
  dir: string;
  /** Written by this call (ms), or reused. */
  writtenMs: number | undefined;
}

export function wideVocabCheckpoint(root: string): WideVocabCheckpoint {
  const dir = join(root, '.loupe', 'bench-decoder-small-32k');
  const marker = readBenchMarker(dir);
  const current =
    marker?.version === RANDOM_GPTQ_FORMAT_VERSION &&
    marker.shape === SHAPE &&
    marker.float === true &&
    marker.seed === 0 &&
    existsSync(join(dir, 'config.json'));
  if (current) return { dir, writtenMs: undefined };
  const written = writeRandomGptqCheckpoint({
    out: dir,
    config: benchShapeConfig('small', WIDE_VOCAB),
    bits: 4,
    groupSize: 128,
    seed: 0,
    float: true,
    shape: SHAPE,
  });
  return { dir, writtenMs: written.ms };
}
