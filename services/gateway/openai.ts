// The OpenAI chat-completions request, as a zod schema (it validates requests and generates
// /openapi.json), and OpenAI's error shape.
import { z } from 'zod';

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
  content: z.union([z.string(), z.array(z.discriminatedUnion('type', [TextPart, ImagePart]))]),
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
  stop: z.union([z.string(), z.array(z.string().min(1)).max(4)]).nullish(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullish(),
  presence_penalty: penalty.nullish(),
  frequency_penalty: penalty.nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  n: z.number().int().min(1).nullish(),
  user: z.string().optional(),
  /** Loupe extensions. */
  top_k: z.number().int().min(0).max(1_000_000).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).nullish(),
  image_splitting: z.boolean().nullish(),
});

export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable';

export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly status: 400 | 401 | 404 | 413 | 429 | 500 | 503,
    message: string,
    readonly type: ErrorType,
    readonly code: string | null = null,
    readonly param: string | null = null,
    /** Seconds, for 429 and 503. */
    readonly retryAfter?: number,
  ) {
    super(message);
  }

  body() {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }
}

export const invalid = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, 'invalid_request_error', code, param);

/** The first zod issue as an OpenAI 400 naming the parameter. */
export function fromZod(error: z.ZodError): ApiError {
  const issue = error.issues[0]!;
  const param = issue.path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .replace(/^\./, '');
  return invalid(`\`${param || 'body'}\`: ${issue.message}`, param || null, 'invalid_value');
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
            '400': { description: 'Invalid request' },
            '401': { description: 'Missing or invalid API key' },
            '413': { description: 'Body too large' },
            '429': { description: 'Rate limited' },
            '503': { description: 'A stage is unavailable' },
          },
        },
      },
      '/v1/models': { get: { responses: { '200': { description: 'The served model' } } } },
    },
  };
}
