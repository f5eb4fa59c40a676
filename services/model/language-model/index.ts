// The Idefics2 language model (the Mistral text decoder) on ONNX Runtime: the graph, host
// embeddings with the image splice, and a greedy loop over batched sequences.
export { spliceImageRows, TokenEmbeddings } from './embeddings.js';
export {
  type GeneratedSequence,
  type GenerateOptions,
  type GenerateResult,
  generateGreedy,
  loadTextModel,
  type LoadTextModelOptions,
  type Prompt,
  type TextModel,
} from './generate.js';
export {
  buildTextGraph,
  cacheNames,
  GROUP_QUERY_MAX_DECODE_ROWS,
  rotaryCaches,
  type TextAttention,
  type TextGraph,
  type TextGraphOptions,
  useGroupQuery,
} from './text-graph.js';
