// The OpenAI chat-completions request, as a zod schema (it validates requests and generates
// /openapi.json), and OpenAI's error shape.
import { z } from 'zod';
import { clip, invalid } from './api-error.js';

const TextPart = z.object({ type: z.literal('text'), text: z.string() });
const ImagePart = z.object({
  type: z.literal('image_url'),
  image_url: z.object({
    url: z.string().min(1),
    detail: z.enum(['auto', 'low', 'high']).optional(),
    /** Loupe extension: split this image into 4 crops + the whole (default: the model's). */
    split: z.boolean().optional(),
  }),
});

export const ChatMessage = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([
    z.string(),
    z
      .array(z.discriminatedUnion('type', [TextPart, ImagePart]))
      .min(1, 'a content array needs at least one part'),
  ]),
  name: z.string().optional(),
});

const penalty = z.number().min(-2).max(2);

export const ChatCompletionRequest = z.object({
  model: z.string().min(1),
  messages: z.array(ChatMessage).min(1),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: z.number().int().min(1).max(1_000_000).nullish(),
  max_completion_tokens: z.number().int().min(1).max(1_000_000).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  stop: z
    .union([
      z.string().min(1, 'a stop string must not be empty'),
      z.array(z.string().min(1, 'a stop string must not be empty')).max(4),
    ])
    .nullish(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullish(),
  presence_penalty: penalty.nullish(),
  frequency_penalty: penalty.nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  n: z.number().int().min(1).max(128).nullish(),
  user: z.string().optional(),
  /** Constrains the answer to JSON (docs/structured-output.md); `text` asks for nothing. */
  response_format: z
    .discriminatedUnion('type', [
      z.object({ type: z.literal('text') }),
      z.object({ type: z.literal('json_object') }),
      z.object({
        type: z.literal('json_schema'),
        json_schema: z.object({
          name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1-64 of a-z, A-Z, 0-9, _ and -'),
          description: z.string().max(4096).optional(),
          schema: z.record(z.string(), z.unknown()).optional(),
          strict: z.boolean().nullish(),
        }),
      }),
    ])
    .nullish(),
  /** Token id (as a string) → bias added to its logit, -100..100 as OpenAI defines it. */
  logit_bias: z
    .record(z.string().regex(/^\d{1,9}$/, 'must be a token id'), z.number().min(-100).max(100))
    .nullish(),
  /** Loupe extensions. */
  top_k: z.number().int().min(0).max(1_000_000).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).max(100).nullish(),
  image_splitting: z.boolean().nullish(),
  /** Token ids that end the answer (besides the model's end-of-sequence ids). */
  stop_token_ids: z.array(z.number().int().min(0)).max(16).nullish(),
});

export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

/**
 * OpenAI parameters Loupe does not implement, each with the values that ask for nothing (and
 * so are accepted): any other value is a 400 `unsupported_parameter`, never silently dropped.
 */
const UNSUPPORTED: Record<string, { neutral: (v: unknown) => boolean; why: string }> = {
  tools: {
    neutral: (v) => Array.isArray(v) && v.length === 0,
    why: 'Idefics2 has no tool-call format',
  },
  tool_choice: { neutral: (v) => v === 'none', why: 'Idefics2 has no tool-call format' },
  parallel_tool_calls: { neutral: () => true, why: '' },
  functions: {
    neutral: (v) => Array.isArray(v) && v.length === 0,
    why: 'Idefics2 has no tool-call format',
  },
  function_call: { neutral: (v) => v === 'none', why: 'Idefics2 has no tool-call format' },
  audio: { neutral: () => false, why: 'Loupe answers in text only' },
  modalities: {
    neutral: (v) => Array.isArray(v) && v.length === 1 && v[0] === 'text',
    why: 'Loupe answers in text only',
  },
  prediction: { neutral: () => false, why: 'predicted outputs are not implemented' },
  store: { neutral: (v) => v === false, why: 'Loupe does not store completions' },
  metadata: {
    neutral: (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0,
    why: 'Loupe does not store completions, so it keeps no metadata',
  },
  service_tier: {
    neutral: (v) => v === 'auto' || v === 'default',
    why: 'Loupe has one service tier',
  },
  reasoning_effort: { neutral: () => false, why: 'Idefics2 is not a reasoning model' },
  verbosity: { neutral: () => false, why: '`verbosity` is not implemented' },
  web_search_options: { neutral: () => false, why: 'Loupe does not search the web' },
};

/**
 * Refuses, before any other check, the OpenAI parameters Loupe does not implement (with a
 * value that asks for something) and keys that are no parameter at all, as OpenAI does.
 */
export function refuseUnsupported(json: unknown): void {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return; // zod says why
  for (const [key, value] of Object.entries(json)) {
    if (key in ChatCompletionRequest.shape) continue;
    const rule = UNSUPPORTED[key];
    if (rule) {
      if (value === null || rule.neutral(value)) continue;
      throw invalid(`\`${key}\` is not supported: ${rule.why}`, key, 'unsupported_parameter');
    }
    throw invalid(
      `Unrecognized request argument supplied: ${clip(key)}`,
      key.slice(0, 64),
      'unknown_parameter',
    );
  }
}

/** The OpenAPI document of the API, from the same schemas. */
export function openApiDocument(modelId: string) {
  return {
    openapi: '3.1.0',
    info: {
      title: 'Loupe',
      version: '1',
      description: `OpenAI-compatible chat completions for ${modelId}`,
    },
    paths: {
      '/v1/chat/completions': {
        post: {
          requestBody: {
            required: true,
            content: { 'application/json': { schema: z.toJSONSchema(ChatCompletionRequest) } },
          },
          responses: {
            '200': {
              description: 'A chat completion (JSON), or a stream of chunks (text/event-stream)',
            },
            '400': {
              description:
                'Invalid request (`invalid_value`, `invalid_json`, `unsupported_parameter`, `unknown_parameter`, an image that cannot be fetched or decoded, ...)',
            },
            '401': { description: 'Missing or invalid API key' },
            '404': { description: 'The model is not served here (`model_not_found`)' },
            '403': {
              description:
                'A Host or Origin this gateway does not serve (`host_not_allowed`, `origin_not_allowed`)',
            },
            '405': { description: 'Another method than POST' },
            '413': { description: 'Body too large' },
            '415': { description: 'A body that is not JSON (`unsupported_media_type`)' },
            '429': { description: 'Rate limited, or the gateway or a queue is full' },
            '500': { description: 'An internal error' },
            '503': { description: 'A stage is unavailable' },
          },
        },
      },
      '/v1/models': {
        get: {
          responses: {
            '200': { description: 'The served model' },
            '401': { description: 'Missing or invalid API key' },
            '405': { description: 'Another method than GET' },
          },
        },
      },
    },
  };
}
