// Checks a Generate request and turns it into the engine's form (protocol.ts EngineRequest):
// every field the engine relies on, with INVALID_ARGUMENT naming the field otherwise. It runs
// on the gRPC thread, before the engine thread sees anything.
import { createHash, randomBytes } from 'node:crypto';
import type { GenerateRequest } from '../../proto/gen/loupe/v1/decoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { float16ToFloat32 } from '../model/index.js';
import { invalidArgument } from '../runtime/index.js';
import type { EngineImage, EngineInfo, EngineRequest } from './protocol.js';

export interface DecoderLimits {
  maxContext: number;
  maxNewTokens: number;
}

const MAX_TOP_LOGPROBS = 20;

function inRange(value: number, field: string, min: number, max: number, open = ''): void {
  const low = open.includes('(') ? value > min : value >= min;
  const high = open.includes(')') ? value < max : value <= max;
  if (!Number.isFinite(value) || !low || !high) {
    const interval = `${open.includes('(') ? '(' : '['}${min}, ${max}${open.includes(')') ? ')' : ']'}`;
    throw invalidArgument(`\`${field}\` must be in ${interval}, got ${value}`, 'bad_sampling');
  }
}

/**
 * The engine's form of a request, every field checked; throws INVALID_ARGUMENT naming it. Its
 * `imageRows` may be the buffer of the request's one image (see ownRows): once the engine has
 * them, the request's embeddings are not to be read.
 */
export function engineRequest(
  id: string,
  request: GenerateRequest,
  {
    vocabSize,
    hiddenSize,
    imageTokenId,
  }: Pick<EngineInfo, 'vocabSize' | 'hiddenSize' | 'imageTokenId'>,
  { maxContext, maxNewTokens }: DecoderLimits,
): EngineRequest {
  const prompt = request.promptTokenIds;
  if (prompt.length === 0) throw invalidArgument('`prompt_token_ids` is empty', 'empty_prompt');
  const badToken = prompt.findIndex((t) => t >= vocabSize);
  if (badToken >= 0) {
    throw invalidArgument(
      `\`prompt_token_ids[${badToken}]\` is ${prompt[badToken]}, outside the vocabulary of ${vocabSize}`,
      'bad_token',
    );
  }
  if (prompt.length >= maxContext) {
    throw invalidArgument(
      `the prompt has ${prompt.length} tokens; the maximum context is ${maxContext} tokens, prompt and generated together`,
      'context_length_exceeded',
    );
  }
  if (request.maxNewTokens > maxNewTokens) {
    throw invalidArgument(
      `\`max_new_tokens\` must be <= ${maxNewTokens}, got ${request.maxNewTokens}`,
      'too_long',
    );
  }
  // 0 (unset): as many as fit.
  const maxNew = request.maxNewTokens || Math.min(maxNewTokens, maxContext - prompt.length);
  if (prompt.length + maxNew > maxContext) {
    throw invalidArgument(
      `the prompt (${prompt.length} tokens) + \`max_new_tokens\` (${maxNew}) exceed the maximum context of ${maxContext} tokens`,
      'context_length_exceeded',
    );
  }
  const badStop = request.stopTokenIds.findIndex((t) => t >= vocabSize);
  if (badStop >= 0) {
    throw invalidArgument(
      `\`stop_token_ids[${badStop}]\` is ${request.stopTokenIds[badStop]}, outside the vocabulary of ${vocabSize}`,
      'bad_token',
    );
  }
  if (request.topLogprobs > MAX_TOP_LOGPROBS) {
    throw invalidArgument(
      `\`top_logprobs\` must be <= ${MAX_TOP_LOGPROBS}, got ${request.topLogprobs}`,
      'bad_logprobs',
    );
  }
  if (request.topLogprobs > 0 && !request.logprobs) {
    throw invalidArgument('`top_logprobs` needs `logprobs` to be true', 'bad_logprobs');
  }

  const s = request.sampling;
  const temperature = s?.temperature ?? 0;
  inRange(temperature, 'sampling.temperature', 0, 100);
  const topP = s?.topP ?? 1;
  inRange(topP, 'sampling.top_p', 0, 1, '(');
  const topK = s?.topK ?? 0;
  inRange(topK, 'sampling.top_k', 0, vocabSize);
  const minP = s?.minP ?? 0;
  inRange(minP, 'sampling.min_p', 0, 1);
  const repetitionPenalty = s?.repetitionPenalty ?? 1;
  inRange(repetitionPenalty, 'sampling.repetition_penalty', 0, 100, '(');
  const presencePenalty = s?.presencePenalty ?? 0;
  inRange(presencePenalty, 'sampling.presence_penalty', -2, 2);
  const frequencyPenalty = s?.frequencyPenalty ?? 0;
  inRange(frequencyPenalty, 'sampling.frequency_penalty', -2, 2);
  const seed = s?.seed !== undefined ? BigInt(s.seed) : randomBytes(8).readBigUInt64LE(0);

  const { imageRows, imageDtype, images } = imageEmbeddings(request, prompt, {
    hiddenSize,
    imageTokenId,
  });
  return {
    id,
    promptIds: [...prompt],
    imageRows,
    imageDtype,
    images,
    sampling: {
      temperature,
      topP,
      topK,
      minP,
      repetitionPenalty,
      presencePenalty,
      frequencyPenalty,
    },
    seed,
    stopTokenIds: [...request.stopTokenIds],
    maxNewTokens: maxNew,
    logprobs: request.logprobs,
    topLogprobs: request.topLogprobs,
  };
}

/**
 * The index of the first NaN or infinity among `data`'s float16 or float32 values (all
 * exponent bits set: 0x7c00 of a half, 0x7f800000 of a single), -1 when every one is finite.
 * Such a value would spread through attention to every later token.
 */
export function firstNonFinite(data: Uint8Array, dtype: 'float16' | 'float32'): number {
  const size = dtype === 'float16' ? 2 : 4;
  const count = Math.floor(data.byteLength / size);
  if (data.byteOffset % size !== 0) {
    // Typed views need aligned offsets, and a message's bytes may sit anywhere in its buffer:
    // those are read through a DataView rather than copied.
    const bytes = new DataView(data.buffer, data.byteOffset, count * size);
    if (dtype === 'float16') {
      for (let i = 0; i < count; i++) {
        if ((bytes.getUint16(2 * i, true) & 0x7c00) === 0x7c00) return i;
      }
    } else {
      for (let i = 0; i < count; i++) {
        if ((bytes.getUint32(4 * i, true) & 0x7f800000) === 0x7f800000) return i;
      }
    }
    return -1;
  }
  if (dtype === 'float16') {
    const halves = new Uint16Array(data.buffer, data.byteOffset, count);
    for (let i = 0; i < count; i++) if ((halves[i]! & 0x7c00) === 0x7c00) return i;
  } else {
    const singles = new Uint32Array(data.buffer, data.byteOffset, count);
    for (let i = 0; i < count; i++) if ((singles[i]! & 0x7f800000) === 0x7f800000) return i;
  }
  return -1;
}

/**
 * The largest GenerateRequest a caller within the limits can send, for the gRPC server's
 * receive limit on Generate (grpc-server.ts RequestLimit: larger messages are refused from
 * their length prefix, before they are buffered): a prompt of `maxContext` token ids,
 * `maxImageRows` image embedding rows (float32, the widest dtype taken; default: as many as
 * the context holds — the gateway's sub-image limit × 64 is the tighter bound when known) with
 * their framing, and `extraBytes` for the rest (stop ids, sampling, logit bias,
 * response format).
 */
export function maxGenerateRequestBytes(
  { hiddenSize }: Pick<EngineInfo, 'hiddenSize'>,
  { maxContext }: Pick<DecoderLimits, 'maxContext'>,
  {
    maxImageRows = maxContext,
    extraBytes = 1 << 20,
  }: { maxImageRows?: number; extraBytes?: number } = {},
): number {
  const varint = 5;
  const prompt = maxContext * varint + 16;
  // Each image: its tensor (dtype, shape, data), with tags and lengths, and a content hash of
  // at most MAX_CONTENT_HASH_BYTES; and a varint per row, the positions callers before their
  // removal (decoder.proto, ImageEmbeddings) still send.
  const perImage = 64 + MAX_CONTENT_HASH_BYTES;
  const images = maxImageRows * (hiddenSize * 4 + varint + perImage);
  return prompt + images + extraBytes;
}

/** Longest `content_hash` taken (a SHA-512 digest). */
const MAX_CONTENT_HASH_BYTES = 64;

/**
 * An image's key for the prefix cache (block-keys.ts): equal keys must mean equal rows. It
 * hashes the caller's content hash when there is one (the gateway's hash of what the encoder
 * encoded), else the rows' bytes themselves (correct, only slower); with the dtype and shape,
 * since float16 and float32 rows of one image give different KV.
 */
function imageKey(
  dtype: 'float16' | 'float32',
  shape: readonly number[],
  contentHash: Uint8Array | undefined,
  data: Uint8Array,
): string {
  const hash = createHash('sha256').update(`loupe-image ${dtype} [${shape.join(', ')}] `);
  if (contentHash && contentHash.length > 0) hash.update('hash ').update(contentHash);
  else hash.update('rows ').update(data);
  return hash.digest('base64');
}

/**
 * All image rows in prompt order as one buffer (float16 when every image is float16, else
 * float32), after checking that they cover exactly the prompt's `<image>` tokens (the first
 * image's rows replace the first of them, and so on); and each image's rows and key.
 */
function imageEmbeddings(
  request: GenerateRequest,
  prompt: readonly number[],
  { hiddenSize, imageTokenId }: { hiddenSize: number; imageTokenId: number },
): { imageRows: Uint8Array; imageDtype: 'float16' | 'float32'; images: EngineImage[] } {
  const imageTokens = prompt.reduce((n, t) => n + (t === imageTokenId ? 1 : 0), 0);
  let rows = 0;
  const parts: Array<{ data: Uint8Array; dtype: 'float16' | 'float32' }> = [];
  const images: EngineImage[] = [];
  request.images.forEach((image, i) => {
    const field = `images[${i}]`;
    const t = image.embeddings;
    if (t === undefined) throw invalidArgument(`\`${field}.embeddings\` is missing`, 'bad_image');
    const dtype =
      t.dtype === Dtype.DTYPE_FLOAT16
        ? 'float16'
        : t.dtype === Dtype.DTYPE_FLOAT32
          ? 'float32'
          : undefined;
    if (dtype === undefined) {
      throw invalidArgument(
        `\`${field}.embeddings.dtype\` must be DTYPE_FLOAT16 or DTYPE_FLOAT32, got ${Dtype[t.dtype] ?? t.dtype}`,
        'bad_image',
      );
    }
    const shape = t.shape.map(Number);
    if (shape.length !== 2 || shape[1] !== hiddenSize) {
      throw invalidArgument(
        `\`${field}.embeddings.shape\` is [${shape.join(', ')}], expected [rows, ${hiddenSize}]`,
        'bad_image',
      );
    }
    const bytes = shape[0]! * hiddenSize * (dtype === 'float16' ? 2 : 4);
    if (t.data.byteLength !== bytes) {
      throw invalidArgument(
        `\`${field}.embeddings.data\` has ${t.data.byteLength} bytes; shape [${shape.join(', ')}] in ${dtype} needs ${bytes}`,
        'bad_image',
      );
    }
    const bad = firstNonFinite(t.data, dtype);
    if (bad >= 0) {
      throw invalidArgument(
        `\`${field}.embeddings.data\` holds a ${dtype} NaN or infinity at row ${Math.floor(bad / hiddenSize)}, column ${bad % hiddenSize}; embeddings must be finite`,
        'bad_image',
      );
    }
    const contentHash = image.contentHash;
    if (contentHash && contentHash.length > MAX_CONTENT_HASH_BYTES) {
      throw invalidArgument(
        `\`${field}.content_hash\` has ${contentHash.length} bytes; at most ${MAX_CONTENT_HASH_BYTES}`,
        'bad_image',
      );
    }
    rows += shape[0]!;
    parts.push({ data: t.data, dtype });
    images.push({ rows: shape[0]!, key: imageKey(dtype, shape, contentHash, t.data) });
  });
  if (rows !== imageTokens) {
    throw invalidArgument(
      `the prompt has ${imageTokens} <image> tokens but ${rows} image embedding rows were given; they must be equal`,
      'bad_image',
    );
  }
  if (parts.every((p) => p.dtype === 'float16')) {
    return { imageRows: ownRows(parts.map((p) => p.data)), imageDtype: 'float16', images };
  }
  // Mixed or float32: each image's bytes copied, or converted, once into the float32 rows.
  const out = new Float32Array(rows * hiddenSize);
  const outBytes = new Uint8Array(out.buffer);
  let at = 0;
  for (const { data, dtype } of parts) {
    if (dtype === 'float32') {
      outBytes.set(data, at * 4);
      at += data.byteLength / 4;
    } else {
      const halves = new DataView(data.buffer, data.byteOffset, data.byteLength);
      const count = data.byteLength / 2;
      for (let i = 0; i < count; i++) out[at + i] = float16ToFloat32(halves.getUint16(2 * i, true));
      at += count;
    }
  }
  return { imageRows: outBytes, imageDtype: 'float32', images };
}

/**
 * The images' float16 rows, in order, in a buffer of their own (it moves to the engine thread):
 * one image's bytes as they are when they fill their buffer alone — as the generated decoder's
 * copy of a received tensor does — else all of them copied once.
 */
function ownRows(parts: readonly Uint8Array[]): Uint8Array {
  const only = parts.length === 1 ? parts[0]! : undefined;
  if (
    only !== undefined &&
    only.buffer instanceof ArrayBuffer &&
    only.byteOffset === 0 &&
    only.byteLength === only.buffer.byteLength
  ) {
    return new Uint8Array(only.buffer);
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
