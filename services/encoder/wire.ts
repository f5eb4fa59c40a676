// The EncodeResponse serializer the service uses (Encode and Lookup): one allocation, one
// copy of the embedding bytes.
import { EncoderService, type EncodeResponse } from '../../proto/gen/loupe/v1/encoder.js';
import { encodeFields, tensorFields, type ProtoField } from '../runtime/index.js';

export function encodeEncodeResponse(message: EncodeResponse): Buffer {
  const fields: ProtoField[] = [];
  if (message.embeddings !== undefined) {
    fields.push({ field: 1, message: tensorFields(message.embeddings) });
  }
  if (message.cacheHit) fields.push({ field: 2, varint: 1 });
  return encodeFields(fields);
}

/** The generated service definition, with the fast response serializer. */
export const EncoderServiceDefinition = {
  ...EncoderService,
  encode: { ...EncoderService.encode, responseSerialize: encodeEncodeResponse },
  lookup: { ...EncoderService.lookup, responseSerialize: encodeEncodeResponse },
} as const;
