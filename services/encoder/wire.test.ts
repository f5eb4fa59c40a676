import { describe, expect, it } from 'vitest';
import { EncodeResponse } from '../../proto/gen/loupe/v1/encoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { encodeEncodeResponse } from './wire.js';

describe('encodeEncodeResponse', () => {
  it('writes the bytes ts-proto writes', () => {
    const data = Buffer.from(Uint8Array.from({ length: 5 * 64 * 64 * 2 }, (_, i) => i % 251));
    for (const message of [
      { embeddings: { dtype: Dtype.DTYPE_FLOAT16, shape: [5, 64, 64], data }, cacheHit: true },
      { embeddings: { dtype: Dtype.DTYPE_FLOAT32, shape: [1, 64, 4096], data }, cacheHit: false },
      { embeddings: undefined, cacheHit: false },
    ]) {
      expect(
        Buffer.compare(
          encodeEncodeResponse(message),
          Buffer.from(EncodeResponse.encode(message).finish()),
        ),
      ).toBe(0);
    }
  });
});
