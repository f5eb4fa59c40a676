// bench:decoder's conversation: an image and a question, then three follow-ups, each turn
// resending the whole conversation with the previous answer, as a chat client does (the
// gateway turns each into one Generate call). The image is idefics2-8b's default: split into
// four crops and the whole, 5 × 64 = 320 image tokens, sent as embedding rows with a content
// hash (the gateway passes the encoder's). Time to first token per turn is what the prefix
// cache is for: with it, a later turn computes only what the last turn added.
import { createHash } from 'node:crypto';
import type { DecoderClient } from '../../proto/gen/loupe/v1/decoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { seededUniform } from '../../services/model/index.js';
import { benchRequest, generate } from './decoder-service.js';

export const TURNS = 4;
export const IMAGE_TOKENS = 5 * 64;
const QUESTION_TOKENS = 24;
const ANSWER_TOKENS = 32;

export interface Conversation {
  /** Prompt tokens of each turn. */
  promptTokens: number[];
  /** Time to first token of each turn, ms. */
  ttftMs: number[];
}

export interface ModelShape {
  vocab: number;
  hidden: number;
  imageTokenId: number;
}

/** One conversation (`seed` makes its image, text and hash its own) on `client`. */
export async function converse(
  client: DecoderClient,
  shape: ModelShape,
  seed: number,
): Promise<Conversation> {
  const next = seededUniform(1000 + seed);
  const text = (n: number) =>
    Array.from({ length: n }, () => {
      const id = 3 + Math.floor(next() * (shape.vocab - 10));
      return id === shape.imageTokenId ? id + 1 : id;
    });
  const rows = Float32Array.from(
    { length: IMAGE_TOKENS * shape.hidden },
    () => 0.05 * (next() * 2 - 1),
  );
  const prefix = [1, ...text(7)];
  const image = {
    embeddings: {
      dtype: Dtype.DTYPE_FLOAT32,
      shape: [IMAGE_TOKENS, shape.hidden],
      data: Buffer.from(rows.buffer, rows.byteOffset, rows.byteLength),
    },
    positions: Array.from({ length: IMAGE_TOKENS }, (_, i) => prefix.length + i),
    contentHash: createHash('sha256').update(`bench image ${seed}`).digest(),
  };
  let prompt = [...prefix, ...new Array<number>(IMAGE_TOKENS).fill(shape.imageTokenId)];
  prompt.push(...text(QUESTION_TOKENS));
  const out: Conversation = { promptTokens: [], ttftMs: [] };
  for (let turn = 0; turn < TURNS; turn++) {
    const answer = await generate(
      client,
      benchRequest({
        promptTokenIds: prompt,
        images: [image],
        // Greedy on random weights: an EOS among 32,003 ids is unlikely, and would only
        // shorten this conversation's answers, the same with the cache on and off.
        maxNewTokens: ANSWER_TOKENS,
      }),
    );
    out.promptTokens.push(prompt.length);
    out.ttftMs.push(answer.ttftMs);
    prompt = [...prompt, ...answer.ids, ...text(QUESTION_TOKENS)];
  }
  return out;
}
