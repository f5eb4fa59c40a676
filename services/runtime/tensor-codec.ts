// The codec of the messages that carry bulk bytes between the stages — sub-images' pixels
// (PreprocessResponse, EncodeRequest), image embeddings (EncodeResponse, GenerateRequest) and
// the encoded image (PreprocessRequest) — used on both ends of each hop, so that the bulk bytes
// cross each hop once:
//
// - writing copies each tensor's bytes once, into the one buffer of the message
//   (proto-writer.ts), where the generated serializer passes over them three or four times;
// - reading copies none: a tensor's `data` is a view of the received message (the generated
//   decoder copies every `bytes` field), so the gateway hands the preprocessor's sub-images to
//   the encoder, and the encoder's embeddings to the decoder, as the very bytes it received.
//
// Everything but the bulk fields is left to the generated code (each message's other fields
// are written by its generated encoder and read by its generated decoder), so the bytes on the
// wire are byte-for-byte what ts-proto writes and either end may use the generated code
// instead. The layout of the messages is proto/loupe/v1/*.proto; the services' own notes on
// what each stage sends are in docs/services.md.
//
// A view keeps the whole received message alive while it is held: whoever keeps a tensor's
// bytes for longer than the call (a cache) copies them.
import { BinaryReader } from '@bufbuild/protobuf/wire';
import {
  DecoderService,
  GenerateRequest,
  ImageEmbeddings,
} from '../../proto/gen/loupe/v1/decoder.js';
import { EncodeRequest, EncodeResponse, EncoderService } from '../../proto/gen/loupe/v1/encoder.js';
import {
  PreprocessorService,
  PreprocessRequest,
  PreprocessResponse,
} from '../../proto/gen/loupe/v1/preprocessor.js';
import { SubImage, Tensor } from '../../proto/gen/loupe/v1/tensor.js';
import { encodeFields, type ProtoField } from './proto-writer.js';

const LENGTH_DELIMITED = 2;
const END_GROUP = 4;

// ---- Writing ----------------------------------------------------------------------------

/** Fields of a loupe.v1.Tensor (dtype 1, shape 2 packed, data 3), defaults left out. */
export function tensorFields(tensor: Tensor): ProtoField[] {
  const fields: ProtoField[] = [];
  if (tensor.dtype !== 0) fields.push({ field: 1, varint: tensor.dtype });
  if (tensor.shape.length !== 0) fields.push({ field: 2, packedVarints: tensor.shape });
  if (tensor.data.byteLength !== 0) fields.push({ field: 3, bytes: tensor.data });
  return fields;
}

/** Fields of a loupe.v1.SubImage (height 1, width 2, pixels 3), defaults left out. */
export function subImageFields(sub: SubImage): ProtoField[] {
  const fields: ProtoField[] = [];
  if (sub.height !== 0) fields.push({ field: 1, varint: sub.height });
  if (sub.width !== 0) fields.push({ field: 2, varint: sub.width });
  if (sub.pixels !== undefined) fields.push({ field: 3, message: tensorFields(sub.pixels) });
  return fields;
}

/** Fields of a loupe.v1.ImageEmbeddings (embeddings 1, content_hash 3, which has presence). */
function imageEmbeddingsFields(image: ImageEmbeddings): ProtoField[] {
  const fields: ProtoField[] = [];
  if (image.embeddings !== undefined) {
    fields.push({ field: 1, message: tensorFields(image.embeddings) });
  }
  if (image.contentHash !== undefined) fields.push({ field: 3, bytes: image.contentHash });
  return fields;
}

/**
 * `rest` (a message without its field `field`, as its generated encoder wrote it) with
 * `bulk` (that field's occurrences) in its place: before the first field numbered above it,
 * where the generated encoder, which writes fields in number order, would have put them.
 */
function withBulk(rest: Uint8Array, field: number, bulk: ProtoField[]): Buffer {
  const reader = new BinaryReader(rest);
  let at = 0;
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 > field) break;
    reader.skip(tag & 7);
    at = reader.pos;
  }
  return encodeFields([{ raw: rest.subarray(0, at) }, ...bulk, { raw: rest.subarray(at) }]);
}

/** A PreprocessRequest (the gateway's): the image file copied once. */
export function encodePreprocessRequest(message: PreprocessRequest): Buffer {
  return withBulk(
    PreprocessRequest.encode({ ...message, image: Buffer.alloc(0) }).finish(),
    1,
    message.image.byteLength === 0 ? [] : [{ field: 1, bytes: message.image }],
  );
}

/** A PreprocessResponse (the preprocessor's answer): the pixels copied once. */
export function encodePreprocessResponse(message: PreprocessResponse): Buffer {
  return withBulk(
    PreprocessResponse.encode({ ...message, subImages: [] }).finish(),
    1,
    message.subImages.map((sub) => ({ field: 1, message: subImageFields(sub) })),
  );
}

/** An EncodeRequest (the gateway's, of the preprocessor's sub-images): the pixels copied once. */
export function encodeEncodeRequest(message: EncodeRequest): Buffer {
  return withBulk(
    EncodeRequest.encode({ ...message, subImages: [] }).finish(),
    1,
    message.subImages.map((sub) => ({ field: 1, message: subImageFields(sub) })),
  );
}

/** An EncodeResponse (the encoder's answer to Encode and Lookup): the rows copied once. */
export function encodeEncodeResponse(message: EncodeResponse): Buffer {
  return withBulk(
    EncodeResponse.encode({ ...message, embeddings: undefined }).finish(),
    1,
    message.embeddings === undefined
      ? []
      : [{ field: 1, message: tensorFields(message.embeddings) }],
  );
}

/** A GenerateRequest (the gateway's, of the encoder's embeddings): the rows copied once. */
export function encodeGenerateRequest(message: GenerateRequest): Buffer {
  return withBulk(
    GenerateRequest.encode({ ...message, images: [] }).finish(),
    2,
    message.images.map((image) => ({ field: 2, message: imageEmbeddingsFields(image) })),
  );
}

// ---- Reading ----------------------------------------------------------------------------

const view = (bytes: Uint8Array): Buffer =>
  Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/**
 * Reads `bytes` as the generated `decode` does, except for the length-delimited field
 * `field`: each of its occurrences, in order, is given to `bulk` as a view of its body (no
 * copy). The other fields are decoded by `decode` from what is left (copied, as they are
 * small; not at all when they lie together). Malformed input throws as the generated decoder
 * does, which stops, as this does, at a tag 0 or an end-group.
 */
function decodeWithBulk<M>(
  bytes: Uint8Array,
  decode: (rest: Uint8Array) => M,
  field: number,
  bulk: (message: M, body: Buffer) => void,
): M {
  const reader = new BinaryReader(bytes);
  const bodies: Buffer[] = [];
  const rest: Uint8Array[] = [];
  let from = 0;
  while (reader.pos < reader.len) {
    const start = reader.pos;
    const tag = reader.uint32();
    if (tag === ((field << 3) | LENGTH_DELIMITED)) {
      if (start > from) rest.push(bytes.subarray(from, start));
      bodies.push(view(reader.bytes()));
      from = reader.pos;
      continue;
    }
    if ((tag & 7) === END_GROUP || tag === 0) break;
    reader.skip(tag & 7);
  }
  if (from < bytes.byteLength) rest.push(bytes.subarray(from));
  const message = decode(rest.length === 1 ? rest[0]! : Buffer.concat(rest));
  for (const body of bodies) bulk(message, body);
  return message;
}

/** A Tensor whose `data` is a view of `bytes`. */
export function decodeTensor(bytes: Uint8Array): Tensor {
  return decodeWithBulk(
    bytes,
    (rest) => Tensor.decode(rest),
    3,
    (tensor, data) => (tensor.data = data),
  );
}

/** A SubImage whose pixels are a view of `bytes`. */
export function decodeSubImage(bytes: Uint8Array): SubImage {
  return decodeWithBulk(
    bytes,
    (rest) => SubImage.decode(rest),
    3,
    (sub, pixels) => (sub.pixels = decodeTensor(pixels)),
  );
}

function decodeImageEmbeddings(bytes: Uint8Array): ImageEmbeddings {
  return decodeWithBulk(
    bytes,
    (rest) => ImageEmbeddings.decode(rest),
    1,
    (image, embeddings) => (image.embeddings = decodeTensor(embeddings)),
  );
}

/** A PreprocessRequest whose image is a view of `bytes`. */
export function decodePreprocessRequest(bytes: Uint8Array): PreprocessRequest {
  return decodeWithBulk(
    bytes,
    (rest) => PreprocessRequest.decode(rest),
    1,
    (message, image) => (message.image = image),
  );
}

/** A PreprocessResponse whose sub-images' pixels are views of `bytes`. */
export function decodePreprocessResponse(bytes: Uint8Array): PreprocessResponse {
  return decodeWithBulk(
    bytes,
    (rest) => PreprocessResponse.decode(rest),
    1,
    (message, sub) => message.subImages.push(decodeSubImage(sub)),
  );
}

/** An EncodeRequest whose sub-images' pixels are views of `bytes`. */
export function decodeEncodeRequest(bytes: Uint8Array): EncodeRequest {
  return decodeWithBulk(
    bytes,
    (rest) => EncodeRequest.decode(rest),
    1,
    (message, sub) => message.subImages.push(decodeSubImage(sub)),
  );
}

/** An EncodeResponse whose embeddings are a view of `bytes`. */
export function decodeEncodeResponse(bytes: Uint8Array): EncodeResponse {
  return decodeWithBulk(
    bytes,
    (rest) => EncodeResponse.decode(rest),
    1,
    (message, embeddings) => (message.embeddings = decodeTensor(embeddings)),
  );
}

/** A GenerateRequest whose images' embeddings are views of `bytes`. */
export function decodeGenerateRequest(bytes: Uint8Array): GenerateRequest {
  return decodeWithBulk(
    bytes,
    (rest) => GenerateRequest.decode(rest),
    2,
    (message, image) => message.images.push(decodeImageEmbeddings(image)),
  );
}

// ---- Service definitions ----------------------------------------------------------------

/**
 * The generated service definitions with this codec on the methods that carry tensors, for
 * the servers (which use the serializer of their answers and the deserializer of their
 * requests) and the gateway's clients (the other two) alike.
 */
export const PreprocessorCodecService = {
  ...PreprocessorService,
  preprocess: {
    ...PreprocessorService.preprocess,
    requestSerialize: encodePreprocessRequest,
    requestDeserialize: (bytes: Buffer) => decodePreprocessRequest(bytes),
    responseSerialize: encodePreprocessResponse,
    responseDeserialize: (bytes: Buffer) => decodePreprocessResponse(bytes),
  },
} as const;

export const EncoderCodecService = {
  ...EncoderService,
  encode: {
    ...EncoderService.encode,
    requestSerialize: encodeEncodeRequest,
    requestDeserialize: (bytes: Buffer) => decodeEncodeRequest(bytes),
    responseSerialize: encodeEncodeResponse,
    responseDeserialize: (bytes: Buffer) => decodeEncodeResponse(bytes),
  },
  lookup: {
    ...EncoderService.lookup,
    responseSerialize: encodeEncodeResponse,
    responseDeserialize: (bytes: Buffer) => decodeEncodeResponse(bytes),
  },
} as const;

export const DecoderCodecService = {
  ...DecoderService,
  generate: {
    ...DecoderService.generate,
    requestSerialize: encodeGenerateRequest,
    requestDeserialize: (bytes: Buffer) => decodeGenerateRequest(bytes),
  },
} as const;
