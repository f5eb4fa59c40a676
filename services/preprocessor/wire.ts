// The PreprocessResponse serializer the service uses: one allocation, one copy of the pixels.
import {
  PreprocessorService,
  type PreprocessResponse,
} from '../../proto/gen/loupe/v1/preprocessor.js';
import { encodeFields, tensorFields, type ProtoField } from '../runtime/index.js';

export function encodePreprocessResponse(message: PreprocessResponse): Buffer {
  const fields: ProtoField[] = [];
  for (const sub of message.subImages) {
    const subFields: ProtoField[] = [];
    if (sub.height !== 0) subFields.push({ field: 1, varint: sub.height });
    if (sub.width !== 0) subFields.push({ field: 2, varint: sub.width });
    if (sub.pixels !== undefined) subFields.push({ field: 3, message: tensorFields(sub.pixels) });
    fields.push({ field: 1, message: subFields });
  }
  if (message.split) fields.push({ field: 2, varint: 1 });
  if (message.imageTokens !== 0) fields.push({ field: 3, varint: message.imageTokens });
  if (message.tokensPerSubImage !== 0) fields.push({ field: 4, varint: message.tokensPerSubImage });
  if (message.source !== undefined) {
    const source: ProtoField[] = [];
    if (message.source.format !== '') source.push({ field: 1, string: message.source.format });
    if (message.source.height !== 0) source.push({ field: 2, varint: message.source.height });
    if (message.source.width !== 0) source.push({ field: 3, varint: message.source.width });
    fields.push({ field: 5, message: source });
  }
  if (message.contentHash.byteLength !== 0) fields.push({ field: 6, bytes: message.contentHash });
  return encodeFields(fields);
}

/** The generated service definition, with the fast response serializer for Preprocess. */
export const PreprocessorServiceDefinition = {
  ...PreprocessorService,
  preprocess: { ...PreprocessorService.preprocess, responseSerialize: encodePreprocessResponse },
} as const;
