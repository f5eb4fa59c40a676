// The tensor codec writes exactly what the generated code writes, reads exactly what it reads,
// and reads tensors as views of the message rather than copies.
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import { GenerateRequest, ImageEmbeddings } from '../../proto/gen/loupe/v1/decoder.js';
import { EncodeRequest, EncodeResponse } from '../../proto/gen/loupe/v1/encoder.js';
import { PreprocessRequest, PreprocessResponse } from '../../proto/gen/loupe/v1/preprocessor.js';
import { Dtype, SubImage, Tensor } from '../../proto/gen/loupe/v1/tensor.js';
import {
  decodeEncodeRequest,
  decodeEncodeResponse,
  decodeGenerateRequest,
  decodePreprocessRequest,
  decodePreprocessResponse,
  decodeTensor,
  DecoderCodecService,
  encodeEncodeRequest,
  encodeEncodeResponse,
  encodeGenerateRequest,
  encodePreprocessRequest,
  encodePreprocessResponse,
  EncoderCodecService,
  PreprocessorCodecService,
} from './tensor-codec.js';

const bytes = (n: number, seed: number) => {
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 255;
  return out;
};
const subImage = (height: number, width: number, seed: number): SubImage => ({
  height,
  width,
  pixels: {
    dtype: Dtype.DTYPE_UINT8,
    shape: [3, height, width],
    data: bytes(3 * height * width, seed),
  },
});
const rows = (n: number, hidden: number, dtype = Dtype.DTYPE_FLOAT16): Tensor => ({
  dtype,
  shape: [n, hidden],
  data: bytes(n * hidden * (dtype === Dtype.DTYPE_FLOAT16 ? 2 : 4), n),
});

interface Case<M> {
  name: string;
  message: M;
  generated: { encode(m: M): BinaryWriter; decode(b: Uint8Array): M };
  encode(m: M): Buffer;
  decode(b: Uint8Array): M;
  /** The tensors' bytes of a decoded message, which must be views of what it was read from. */
  tensors(m: M): Uint8Array[];
}

const image: Case<PreprocessRequest>[] = [
  { image: Buffer.alloc(0), split: undefined },
  { image: bytes(70_000, 3), split: false },
  { image: bytes(9, 4), split: true },
].map((message, i) => ({
  name: `PreprocessRequest ${i}`,
  message,
  generated: PreprocessRequest,
  encode: encodePreprocessRequest,
  decode: decodePreprocessRequest,
  tensors: (m) => (m.image.length ? [m.image] : []),
}));

const preprocess: Case<PreprocessResponse>[] = [
  PreprocessResponse.fromPartial({}),
  PreprocessResponse.fromPartial({
    subImages: [subImage(28, 42, 1), subImage(30, 30, 2), subImage(14, 14, 3)],
    split: true,
    subImagesHash: bytes(32, 9),
  }),
  PreprocessResponse.fromPartial({
    subImages: [
      { height: 0, width: 5, pixels: { dtype: 0, shape: [0, 2 ** 40], data: Buffer.alloc(0) } },
    ],
  }),
].map((message, i) => ({
  name: `PreprocessResponse ${i}`,
  message,
  generated: PreprocessResponse,
  encode: encodePreprocessResponse,
  decode: decodePreprocessResponse,
  tensors: (m) => m.subImages.flatMap((s) => (s.pixels?.data.length ? [s.pixels.data] : [])),
}));

const encode: Case<EncodeRequest>[] = [
  EncodeRequest.fromPartial({}),
  EncodeRequest.fromPartial({
    subImages: [subImage(28, 28, 4), subImage(14, 70, 5)],
    contentHash: bytes(32, 1),
    split: true,
    outputDtype: Dtype.DTYPE_FLOAT32,
  }),
  // An enum value this build does not know is written as ts-proto writes it (10 bytes).
  EncodeRequest.fromPartial({
    subImages: [{ ...subImage(14, 14, 6), pixels: { ...subImage(14, 14, 6).pixels!, dtype: -1 } }],
    outputDtype: -1,
  }),
].map((message, i) => ({
  name: `EncodeRequest ${i}`,
  message,
  generated: EncodeRequest,
  encode: encodeEncodeRequest,
  decode: decodeEncodeRequest,
  tensors: (m) => m.subImages.map((s) => s.pixels!.data),
}));

const encoded: Case<EncodeResponse>[] = [
  { embeddings: undefined, cacheHit: false },
  { embeddings: rows(5 * 64, 64), cacheHit: true },
  { embeddings: { ...rows(64, 32, Dtype.DTYPE_FLOAT32), shape: [1, 64, 32] }, cacheHit: false },
].map((message, i) => ({
  name: `EncodeResponse ${i}`,
  message,
  generated: EncodeResponse,
  encode: encodeEncodeResponse,
  decode: decodeEncodeResponse,
  tensors: (m) => (m.embeddings ? [m.embeddings.data] : []),
}));

const generate: Case<GenerateRequest>[] = [
  GenerateRequest.fromPartial({}),
  GenerateRequest.fromPartial({
    promptTokenIds: [1, 99, 99, 99, 2 ** 32 - 1, 5],
    images: [
      { embeddings: rows(2, 16), contentHash: bytes(32, 2) },
      { embeddings: rows(1, 16, Dtype.DTYPE_FLOAT32) },
      { embeddings: undefined, contentHash: Buffer.alloc(0) },
    ],
    sampling: { temperature: 0.7, topP: 0.9, topK: 40, seed: '18446744073709551615' },
    stopTokenIds: [7, 8],
    maxNewTokens: 32,
    logprobs: true,
    topLogprobs: 3,
    logitBias: { 5: -100, 6: 2.5 },
    responseFormat: { format: { $case: 'jsonSchema', value: '{"type":"object"}' } },
  }),
  // Images only (nothing before field 2, nothing after).
  GenerateRequest.fromPartial({ images: [{ embeddings: rows(3, 8) }] }),
].map((message, i) => ({
  name: `GenerateRequest ${i}`,
  message,
  generated: GenerateRequest,
  encode: encodeGenerateRequest,
  decode: decodeGenerateRequest,
  tensors: (m) => m.images.flatMap((e) => (e.embeddings?.data.length ? [e.embeddings.data] : [])),
}));

const cases = [...image, ...preprocess, ...encode, ...encoded, ...generate] as Case<unknown>[];

describe('tensor codec', () => {
  it.each(cases.map((c) => [c.name, c] as const))(
    '%s: the generated code’s bytes, read back as it reads them, tensors as views',
    (_name, c) => {
      const expected = Buffer.from(c.generated.encode(c.message).finish());
      const wire = c.encode(c.message);
      expect(wire.equals(expected)).toBe(true);
      const decoded = c.decode(wire);
      expect(decoded).toEqual(c.generated.decode(wire));
      for (const data of c.tensors(decoded)) {
        expect(data.buffer).toBe(wire.buffer);
        expect(data.byteOffset).toBeGreaterThanOrEqual(wire.byteOffset);
        expect(data.byteOffset + data.byteLength).toBeLessThanOrEqual(
          wire.byteOffset + wire.byteLength,
        );
      }
    },
  );

  it('reads fields in any order, repeated singular fields (the last wins) and unknown fields', () => {
    const a = Tensor.encode({ ...rows(2, 4), data: bytes(16, 1) }).finish();
    const b = Tensor.encode({ ...rows(2, 4), data: bytes(16, 2) }).finish();
    const w = new BinaryWriter();
    w.uint32((2 << 3) | 0).bool(true); // cache_hit before embeddings
    w.uint32((9 << 3) | 2).bytes(bytes(5, 3)); // unknown field
    w.uint32((1 << 3) | 2).bytes(a);
    w.uint32((1 << 3) | 2).bytes(b); // a second embeddings: replaces the first
    w.uint32((7 << 3) | 0).uint32(300); // unknown varint
    const wire = Buffer.from(w.finish());
    const decoded = decodeEncodeResponse(wire);
    expect(decoded).toEqual(EncodeResponse.decode(wire));
    expect(decoded.embeddings!.data.equals(bytes(16, 2))).toBe(true);

    // Sub-images interleaved with the other fields keep their order.
    const r = new BinaryWriter();
    r.uint32((3 << 3) | 0).bool(true);
    r.uint32((1 << 3) | 2).bytes(SubImage.encode(subImage(14, 14, 1)).finish());
    r.uint32((2 << 3) | 2).bytes(bytes(32, 4));
    r.uint32((1 << 3) | 2).bytes(SubImage.encode(subImage(28, 14, 2)).finish());
    r.uint32((4 << 3) | 0).int32(Dtype.DTYPE_FLOAT32);
    const request = Buffer.from(r.finish());
    expect(decodeEncodeRequest(request)).toEqual(EncodeRequest.decode(request));
    expect(decodeEncodeRequest(request).subImages.map((s) => s.height)).toEqual([14, 28]);
  });

  it('fails on malformed input as the generated decoder does', () => {
    const wire = encodeEncodeRequest(
      EncodeRequest.fromPartial({ subImages: [subImage(14, 14, 1)], contentHash: bytes(32, 0) }),
    );
    for (const cut of [1, 10, wire.length - 40, wire.length - 1]) {
      const truncated = wire.subarray(0, cut);
      expect(() => EncodeRequest.decode(truncated)).toThrow();
      expect(() => decodeEncodeRequest(truncated)).toThrow();
    }
    // A shape past 2^53: the generated decoder's message, which the gRPC server maps to
    // INVALID_ARGUMENT integer_out_of_range.
    const huge = new BinaryWriter();
    huge.uint32((2 << 3) | 0).uint64(2n ** 60n);
    expect(() => decodeTensor(huge.finish())).toThrow(/MAX_SAFE_INTEGER/);
  });

  it('covers every field of the messages it writes by hand', () => {
    // A field added to these messages must be written in tensor-codec.ts too.
    expect(Object.keys(Tensor.fromPartial({})).sort()).toEqual(['data', 'dtype', 'shape']);
    expect(Object.keys(SubImage.fromPartial({})).sort()).toEqual(['height', 'pixels', 'width']);
    expect(Object.keys(ImageEmbeddings.fromPartial({})).sort()).toEqual([
      'contentHash',
      'embeddings',
    ]);
  });

  it('is what the codec service definitions use, on both ends of each hop', () => {
    expect(PreprocessorCodecService.preprocess.requestSerialize).toBe(encodePreprocessRequest);
    expect(PreprocessorCodecService.preprocess.responseSerialize).toBe(encodePreprocessResponse);
    expect(EncoderCodecService.encode.requestSerialize).toBe(encodeEncodeRequest);
    expect(EncoderCodecService.encode.responseSerialize).toBe(encodeEncodeResponse);
    expect(EncoderCodecService.lookup.responseSerialize).toBe(encodeEncodeResponse);
    expect(DecoderCodecService.generate.requestSerialize).toBe(encodeGenerateRequest);
    const wire = encodeEncodeResponse({ embeddings: rows(2, 4), cacheHit: true });
    expect(EncoderCodecService.lookup.responseDeserialize(wire).embeddings!.data.buffer).toBe(
      wire.buffer,
    );
  });
});
