// The Encoder service definition the server registers: the generated one with the tensor codec
// (services/runtime/tensor-codec.ts) on Encode and Lookup, so a request's pixels are read as
// views of the message (no copy), and the embeddings of an answer are copied once into it.
export { encodeEncodeResponse } from '../runtime/index.js';
export { EncoderCodecService as EncoderServiceDefinition } from '../runtime/index.js';
