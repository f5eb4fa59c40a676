// `loupe tiny-model`: a complete Idefics2 checkpoint directory with seeded random weights,
// loadable by Loupe and by the reference (transformers), with a real tokenizer.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expectedTensors } from '../checkpoint/index.js';
import { parseIdefics2Config } from '../config/index.js';
import { DEFAULT_IMAGE_PROCESSOR_CONFIG, processorConfigFiles } from '../image/index.js';
import { elementCount, writeSafetensors, type TensorToWrite } from '../safetensors/index.js';
import { tinyModelConfig, type TinySize } from './tiny-configs.js';

/** The tokenizer files every tiny checkpoint gets (a small Llama-style BPE, see its README). */
export function tinyTokenizerDir(): string {
  // Next to this file in the source tree; from dist/, the same folder under services/.
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    join(here, 'tokenizer'),
    join(here, '..', '..', '..', '..', 'services', 'model', 'tiny', 'tokenizer'),
  ];
  const found = candidates.find((dir) => existsSync(join(dir, 'tokenizer.json')));
  if (!found) throw new Error(`the tiny tokenizer is missing (looked in ${candidates.join(', ')})`);
  return found;
}

/** A seeded generator of uniform samples in (0, 1) (mulberry32). */
export function seededUniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
}

/** A seeded generator of standard normal samples (Box-Muller over seededUniform). */
function normals(seed: number): () => number {
  const uniform = seededUniform(seed);
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

export interface TinyModelOptions {
  out: string;
  seed?: number;
  size?: TinySize;
}

/**
 * Weights: linear layers and embeddings N(0, 0.02²) (the reference's initializer_range),
 * biases N(0, 0.02²), norm weights 1 + N(0, 0.1²) and perceiver latents N(0, 1), so that a
 * wrong norm or a transposed weight shows in the outputs instead of hiding behind ones.
 */
export function writeTinyModel({ out, seed = 0, size = 'tiny' }: TinyModelOptions): {
  config: ReturnType<typeof tinyModelConfig>;
} {
  if (existsSync(out) && readdirSync(out).length > 0)
    throw new Error(`${out} exists and is not empty`);
  mkdirSync(out, { recursive: true });
  const tokenizerDir = tinyTokenizerDir();
  const tokenizer = JSON.parse(readFileSync(join(tokenizerDir, 'tokenizer.json'), 'utf8')) as {
    model: { vocab: Record<string, number> };
    added_tokens: Array<{ id: number; content: string }>;
  };
  const ids = [...Object.values(tokenizer.model.vocab), ...tokenizer.added_tokens.map((t) => t.id)];
  const vocabSize = Math.max(...ids) + 1;
  const imageToken = tokenizer.added_tokens.find((t) => t.content === '<image>');
  const endOfUtterance = tokenizer.added_tokens.find((t) => t.content === '<end_of_utterance>');
  const fake = tokenizer.added_tokens.find((t) => t.content === '<fake_token_around_image>');
  if (!imageToken || !endOfUtterance || !fake)
    throw new Error(`${tokenizerDir}/tokenizer.json lacks the Idefics2 special tokens`);

  const config = tinyModelConfig(size, { vocabSize, imageTokenId: imageToken.id });
  const shapes = expectedTensors(parseIdefics2Config(config));
  const next = normals(seed);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of shapes) {
    const n = elementCount(shape);
    const data = new Float32Array(n);
    const isNorm = /norm|layer_norm/.test(name) && name.endsWith('.weight');
    const isLatents = name.endsWith('perceiver_resampler.latents');
    for (let i = 0; i < n; i++) {
      data[i] = isNorm ? 1 + 0.1 * next() : isLatents ? next() : 0.02 * next();
    }
    tensors[name] = { dtype: 'F32', shape, data };
  }
  writeSafetensors(join(out, 'model.safetensors'), tensors, { metadata: { format: 'pt' } });

  const json = (name: string, value: unknown) =>
    writeFileSync(join(out, name), JSON.stringify(value, null, 2) + '\n');
  json('config.json', config);
  json('generation_config.json', {
    bos_token_id: 1,
    eos_token_id: [2, endOfUtterance.id],
    pad_token_id: 0,
    bad_words_ids: [[fake.id], [imageToken.id]],
  });
  // The idefics2-8b image processor with splitting off: five times fewer image tokens.
  const processorFiles = processorConfigFiles({
    ...DEFAULT_IMAGE_PROCESSOR_CONFIG,
    doImageSplitting: false,
  });
  for (const [name, value] of Object.entries(processorFiles)) json(name, value);
  for (const name of readdirSync(tokenizerDir)) {
    if (name.endsWith('.json')) copyFileSync(join(tokenizerDir, name), join(out, name));
  }
  // Processors (transformers >= 4.43) read their template from chat_template.json.
  const { chat_template: chatTemplate } = JSON.parse(
    readFileSync(join(tokenizerDir, 'tokenizer_config.json'), 'utf8'),
  ) as {
    chat_template?: string;
  };
  if (chatTemplate) json('chat_template.json', { chat_template: chatTemplate });
  return { config };
}
