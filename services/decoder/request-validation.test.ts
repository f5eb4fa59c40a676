// Generate requests as a direct gRPC caller may send them: every hostile value is refused with
// INVALID_ARGUMENT naming its field, never passed on to the engine.
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { GenerateRequest } from '../../proto/gen/loupe/v1/decoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { float16ToFloat32, float32ToFloat16 } from '../model/index.js';
import { ServiceError } from '../runtime/index.js';
import { engineRequest, firstNonFinite, maxGenerateRequestBytes } from './request-validation.js';

const INFO = { vocabSize: 100, hiddenSize: 4, imageTokenId: 9 };
const LIMITS = { maxContext: 64, maxNewTokens: 16 };

/** A prompt with two <image> tokens and one image of two rows there. */
function withImage(values: number[], dtype: 'float16' | 'float32') {
  const data =
    dtype === 'float32'
      ? Buffer.from(Float32Array.from(values).buffer)
      : Buffer.from(Uint16Array.from(values, (v) => float32ToFloat16(v)).buffer);
  return GenerateRequest.fromPartial({
    promptTokenIds: [1, 9, 9, 2],
    images: [
      {
        embeddings: {
          dtype: dtype === 'float32' ? Dtype.DTYPE_FLOAT32 : Dtype.DTYPE_FLOAT16,
          shape: [2, 4],
          data,
        },
      },
    ],
    maxNewTokens: 4,
  });
}

function refusal(request: GenerateRequest): ServiceError {
  try {
    engineRequest('r', request, INFO, LIMITS);
  } catch (error) {
    if (error instanceof ServiceError) return error;
    throw error;
  }
  throw new Error('expected a refusal');
}

const FINITE = [0, 1, -2, 65504, 1e-7, -0, 3, 4];

describe('engineRequest on hostile input', () => {
  it('takes finite embeddings in both dtypes', () => {
    for (const dtype of ['float16', 'float32'] as const)
      expect(engineRequest('r', withImage(FINITE, dtype), INFO, LIMITS).images).toHaveLength(1);
  });

  it.each([
    ['NaN', Number.NaN],
    ['+Inf', Number.POSITIVE_INFINITY],
    ['-Inf', Number.NEGATIVE_INFINITY],
  ])('refuses %s in float16 and float32 embeddings, naming the row and column', (_name, bad) => {
    for (const dtype of ['float16', 'float32'] as const) {
      const values = [...FINITE];
      values[6] = bad; // row 1, column 2
      const error = refusal(withImage(values, dtype));
      expect(error.code).toBe(status.INVALID_ARGUMENT);
      expect(error.reason).toBe('bad_image');
      expect(error.message).toBe(
        `\`images[0].embeddings.data\` holds a ${dtype} NaN or infinity at row 1, column 2; embeddings must be finite`,
      );
    }
  });

  it('finds a non-finite value in bytes at an odd offset of their buffer', () => {
    const halves = Uint16Array.from([0x3c00, 0x3c00, 0x7e00]);
    const shifted = Buffer.alloc(halves.byteLength + 1);
    Buffer.from(halves.buffer).copy(shifted, 1);
    expect(firstNonFinite(shifted.subarray(1), 'float16')).toBe(2);
    expect(firstNonFinite(Buffer.from(Float32Array.of(1, 2, 3).buffer), 'float32')).toBe(-1);
  });

  it('passes the rows on in one buffer of their own, each byte copied or converted once at most', () => {
    // One float16 image whose bytes fill their buffer (as the generated decoder leaves them):
    // that buffer itself, which moves to the engine thread.
    const one = withImage(FINITE, 'float16');
    const own = engineRequest('r', one, INFO, LIMITS);
    expect(own.imageDtype).toBe('float16');
    expect(own.imageRows.buffer).toBe(one.images[0]!.embeddings!.data.buffer);

    // Views of a message (the tensor codec's), at odd offsets, two images: one copy, joined.
    const halves = Buffer.from(Uint16Array.from(FINITE, (v) => float32ToFloat16(v)).buffer);
    const message = Buffer.alloc(1 + 2 * halves.byteLength);
    halves.copy(message, 1);
    halves.copy(message, 1 + halves.byteLength);
    const image = (data: Buffer, dtype = Dtype.DTYPE_FLOAT16) => ({
      embeddings: { dtype, shape: [2, 4], data },
    });
    const two = GenerateRequest.fromPartial({
      promptTokenIds: [1, 9, 9, 9, 9, 2],
      images: [
        image(message.subarray(1, 1 + halves.byteLength)),
        image(message.subarray(1 + halves.byteLength)),
      ],
      maxNewTokens: 4,
    });
    const joined = engineRequest('r', two, INFO, LIMITS);
    expect(joined.imageRows.buffer).not.toBe(message.buffer);
    expect(Buffer.from(joined.imageRows).equals(Buffer.concat([halves, halves]))).toBe(true);

    // float16 beside float32: all float32, the halves converted.
    const singles = Buffer.from(Float32Array.from(FINITE).buffer);
    const mixed = GenerateRequest.fromPartial({
      ...two,
      images: [
        image(message.subarray(1, 1 + halves.byteLength)),
        image(singles, Dtype.DTYPE_FLOAT32),
      ],
    });
    const float32 = engineRequest('r', mixed, INFO, LIMITS);
    expect(float32.imageDtype).toBe('float32');
    const values = new Float32Array(float32.imageRows.buffer);
    expect(Array.from(values.subarray(0, 8))).toEqual(
      FINITE.map((v) => float16ToFloat32(float32ToFloat16(v))),
    );
    expect(Array.from(values.subarray(8))).toEqual(Array.from(Float32Array.from(FINITE)));
  });

  it('places the rows by the prompt: their count must be its <image> tokens', () => {
    const error = refusal(
      GenerateRequest.fromPartial({ ...withImage(FINITE, 'float32'), promptTokenIds: [1, 9, 2] }),
    );
    expect([error.code, error.reason]).toEqual([status.INVALID_ARGUMENT, 'bad_image']);
    expect(error.message).toBe(
      'the prompt has 1 <image> tokens but 2 image embedding rows were given; they must be equal',
    );
  });

  it.each([
    ['temperature', { temperature: Number.NaN }],
    ['top_p', { topP: Number.POSITIVE_INFINITY }],
    ['min_p', { minP: Number.NaN }],
    ['repetition_penalty', { repetitionPenalty: Number.NEGATIVE_INFINITY }],
    ['presence_penalty', { presencePenalty: Number.NaN }],
    ['frequency_penalty', { frequencyPenalty: Number.POSITIVE_INFINITY }],
    ['top_k', { topK: 4_000_000_000 }],
  ])('refuses a non-finite or out-of-range sampling.%s', (field, sampling) => {
    const error = refusal(
      GenerateRequest.fromPartial({
        promptTokenIds: [1, 2],
        maxNewTokens: 4,
        sampling: { temperature: 1, ...sampling },
      }),
    );
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.message).toMatch(new RegExp(`^\`sampling\\.${field}\` must be in`));
  });

  it('bounds a Generate message by the context and the embedding width', () => {
    const bound = maxGenerateRequestBytes(
      { hiddenSize: 4096 },
      { maxContext: 4096 },
      {
        maxImageRows: 16 * 64,
        extraBytes: 0,
      },
    );
    // 1024 float32 rows of 4096, and a 4096-token prompt, with room for their framing.
    expect(bound).toBeGreaterThan(1024 * 4096 * 4 + 4096);
    expect(bound).toBeLessThan(1024 * 4096 * 4 * 1.01 + 4096 * 5 + 1024 * 200);
    // A real request of that size fits under it.
    const rows = 1024;
    const request = GenerateRequest.fromPartial({
      promptTokenIds: Array.from({ length: 4096 }, (_, i) => (i < rows ? 9 : 99_999)),
      images: [
        {
          embeddings: {
            dtype: Dtype.DTYPE_FLOAT32,
            shape: [rows, 4096],
            data: Buffer.alloc(rows * 4096 * 4),
          },
          contentHash: Buffer.alloc(64),
        },
      ],
      maxNewTokens: 4096,
      sampling: { temperature: 1, seed: '18446744073709551615' },
    });
    expect(GenerateRequest.encode(request).finish().length).toBeLessThanOrEqual(bound);
  });
});
