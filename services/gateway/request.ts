// Parse: a chat-completion body → one ValidChatRequest, with every check that needs nothing
// but the body applied — unsupported parameters, the schema, the model, the caps on messages,
// text and images, and the cross-field rules. Nothing after this step looks at the raw JSON.
// (The pipeline is described in docs/gateway.md.)
import type { SamplingParams } from '../../proto/gen/loupe/v1/decoder.js';
import type { ChatMessage as TemplateMessage, TextTokenizer } from '../model/index.js';
import { ApiError, clip, fromZod, invalid } from './api-error.js';
import { MAX_LOGIT_BIAS } from '../decoder/grammar/request-format.js';
import { checkSchema, SchemaError } from '../decoder/grammar/schema-subset.js';
import { ChatCompletionRequest, refuseUnsupported } from './openai.js';

export interface ImageRef {
  url: string;
  /** The parameter path of the URL, for errors (`messages[0].content[1].image_url.url`). */
  field: string;
  /** Whether the image is split into 4 crops + the whole. */
  split: boolean;
}

/** A chat request that passed every check the body alone allows. */
export interface ValidChatRequest {
  /** Messages as the chat template takes them; their text already escaped. */
  messages: TemplateMessage[];
  /** Whether some text spelled a control token (the prompt is then encoded with literals). */
  escaped: boolean;
  /** Characters of text in all messages. */
  textChars: number;
  images: ImageRef[];
  /** Images fetched over HTTP(S): each may hold up to the image byte cap while it runs. */
  fetches: number;
  stream: boolean;
  includeUsage: boolean;
  /** Tokens to generate at most; 0 = up to the context. */
  maxTokens: number;
  sampling: SamplingParams;
  stop: string[];
  /** Token ids that end the answer, besides the model's EOS. */
  stopTokenIds: number[];
  /** Choices to generate (OpenAI's `n`); each its own sequence from the one prompt. */
  choices: number;
  logprobs: boolean;
  topLogprobs: number;
  /** The answer constrained to JSON, or undefined for free text. */
  responseFormat: { kind: 'json_object' } | { kind: 'json_schema'; schema: string } | undefined;
  /** Token id → bias added to its logit. */
  logitBias: Record<number, number>;
}

export interface RequestRules {
  modelId: string;
  maxMessages: number;
  maxPromptChars: number;
  maxImages: number;
  /** The most choices (`n`) one request may ask for. */
  maxChoices: number;
  /** Whether images are split when the request does not say (the model's processor). */
  splitByDefault: boolean;
  /** Escapes control tokens spelled in text, so they reach the model as plain text. */
  tokenizer: Pick<TextTokenizer, 'escapeLiteral'>;
}

export function parseChatRequest(json: unknown, rules: RequestRules): ValidChatRequest {
  refuseUnsupported(json);
  const parsed = ChatCompletionRequest.safeParse(json);
  if (!parsed.success) throw fromZod(parsed.error);
  const body = parsed.data;

  if (body.model !== rules.modelId) {
    throw new ApiError({
      status: 404,
      message: `The model \`${clip(body.model)}\` does not exist; this server serves \`${rules.modelId}\``,
      code: 'model_not_found',
      param: 'model',
    });
  }
  // Caps before any work: the cost of templating and tokenizing grows with these.
  if (body.messages.length > rules.maxMessages) {
    throw invalid(
      `the request has ${body.messages.length} messages, over the limit of ${rules.maxMessages}`,
      'messages',
      'too_many_messages',
    );
  }
  let textChars = 0;
  for (const m of body.messages) {
    if (typeof m.content === 'string') textChars += m.content.length;
    else for (const part of m.content) if (part.type === 'text') textChars += part.text.length;
  }
  if (textChars > rules.maxPromptChars) {
    throw invalid(
      `the messages hold ${textChars} characters of text, over the limit of ${rules.maxPromptChars}`,
      'messages',
      'prompt_too_long',
    );
  }
  const choices = body.n ?? 1;
  if (choices > rules.maxChoices) {
    throw invalid(
      `\`n\` is ${choices}; this server generates at most ${rules.maxChoices} choices per request`,
      'n',
      'invalid_value',
    );
  }
  if ((body.top_logprobs ?? 0) > 0 && !body.logprobs)
    throw invalid('`top_logprobs` needs `logprobs: true`', 'top_logprobs');

  const images: ImageRef[] = [];
  // Control tokens spelled in a message (`<image>`, `<end_of_utterance>`, ...) are escaped,
  // so they reach the model as plain text: nobody forges an image or a turn.
  let escaped = false;
  const plain = (text: string) => {
    const safe = rules.tokenizer.escapeLiteral(text);
    if (safe !== text) escaped = true;
    return { type: 'text' as const, text: safe };
  };
  const messages: TemplateMessage[] = body.messages.map((m, mi) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content:
      typeof m.content === 'string'
        ? [plain(m.content)]
        : m.content.map((part, pi) => {
            if (part.type === 'text') return plain(part.text);
            images.push({
              url: part.image_url.url,
              field: `messages[${mi}].content[${pi}].image_url.url`,
              split: part.image_url.split ?? body.image_splitting ?? rules.splitByDefault,
            });
            return { type: 'image' as const };
          }),
  }));
  if (images.length > rules.maxImages) {
    throw invalid(
      `the request has ${images.length} images, over the limit of ${rules.maxImages}`,
      'messages',
      'too_many_images',
    );
  }

  const format = body.response_format;
  let responseFormat: ValidChatRequest['responseFormat'];
  if (format?.type === 'json_object') responseFormat = { kind: 'json_object' };
  if (format?.type === 'json_schema') {
    // No schema: any JSON value would do, which is what json_object gives, as an object.
    const schema = format.json_schema.schema ?? { type: 'object' };
    try {
      checkSchema(schema, 'response_format.json_schema.schema');
    } catch (error) {
      if (!(error instanceof SchemaError)) throw error;
      throw invalid(error.message, error.path, error.reason);
    }
    responseFormat = { kind: 'json_schema', schema: JSON.stringify(schema) };
  }
  const logitBias = Object.fromEntries(
    Object.entries(body.logit_bias ?? {}).map(([id, bias]) => [Number(id), bias]),
  );
  if (Object.keys(logitBias).length > MAX_LOGIT_BIAS) {
    throw invalid(
      `\`logit_bias\` has ${Object.keys(logitBias).length} tokens, over the limit of ${MAX_LOGIT_BIAS}`,
      'logit_bias',
      'invalid_value',
    );
  }

  return {
    responseFormat,
    logitBias,
    messages,
    escaped,
    textChars,
    images,
    fetches: images.filter((i) => /^https?:/i.test(i.url)).length,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? 0,
    sampling: {
      temperature: body.temperature ?? 1,
      ...(body.top_p != null ? { topP: body.top_p } : {}),
      ...(body.top_k != null ? { topK: body.top_k } : {}),
      ...(body.min_p != null ? { minP: body.min_p } : {}),
      ...(body.repetition_penalty != null ? { repetitionPenalty: body.repetition_penalty } : {}),
      ...(body.presence_penalty != null ? { presencePenalty: body.presence_penalty } : {}),
      ...(body.frequency_penalty != null ? { frequencyPenalty: body.frequency_penalty } : {}),
      ...(body.seed != null ? { seed: String(body.seed) } : {}),
    },
    stop: body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop,
    stopTokenIds: body.stop_token_ids ?? [],
    choices,
    logprobs: body.logprobs ?? false,
    topLogprobs: body.top_logprobs ?? 0,
  };
}
