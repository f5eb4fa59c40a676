// Plan: the prompt's token ids, built and checked against the decoder's context before any
// image is fetched or encoded. Whether an image is split fixes its token count (5 or 1
// sub-images of imageSeqLen tokens each), so the whole prompt is known from the request
// alone, and a request that cannot fit costs no fetch, preprocessing or encoding
// (docs/gateway.md).
import type { ChatTemplate, TextTokenizer } from '../model/index.js';
import { invalid } from './api-error.js';
import { promptIds, type PromptInput } from './prompt.js';
import type { PromptPool } from './prompt-pool.js';
import type { ValidChatRequest } from './request.js';
import type { CallContext, StageClient } from './stage-client.js';

/** Prompts with more characters of text than this are built in the prompt pool. */
export const INLINE_PROMPT_CHARS = 8192;

/** How long the decoders' limits are trusted before they are asked again, ms. */
const LIMITS_TTL_MS = 60_000;

/** What a decoder takes; zeros (no check here: the decoder still checks) until one answers. */
interface DecoderLimits {
  maxContext: number;
  maxNewTokens: number;
  vocabSize: number;
}

export interface PlannerOptions {
  tokenizer: TextTokenizer;
  template: ChatTemplate;
  imageSeqLen: number;
  stages: Pick<StageClient, 'decoderInfo'>;
  /** Threads for long prompts; without it every prompt is built on the event loop. */
  prompts?: PromptPool | undefined;
  /** Told where each prompt was built (for metrics). */
  onPrompt?: (where: 'inline' | 'pool') => void;
}

export class Planner {
  /** The decoders' limits and when they were asked. */
  #limits = { maxContext: 0, maxNewTokens: 0, vocabSize: 0, at: 0 };

  constructor(private readonly o: PlannerOptions) {}

  /**
   * The prompt's token ids, images' runs included; throws a 400 when it cannot fit, or when a
   * parameter is past what the decoders take — before any image is fetched.
   */
  async promptIds(request: ValidChatRequest, ctx: CallContext): Promise<number[]> {
    const { maxContext, maxNewTokens, vocabSize } = await this.#decoderLimits(ctx);
    if (maxNewTokens > 0 && request.maxTokens > maxNewTokens) {
      throw invalid(
        `\`max_tokens\` is ${request.maxTokens}; this server generates at most ${maxNewTokens} tokens per answer`,
        'max_tokens',
        'invalid_value',
      );
    }
    if (vocabSize > 0 && (request.sampling.topK ?? 0) > vocabSize) {
      throw invalid(
        `\`top_k\` is ${request.sampling.topK}; the model has ${vocabSize} tokens`,
        'top_k',
        'invalid_value',
      );
    }
    const outside = Object.keys(request.logitBias).find((id) => Number(id) >= vocabSize);
    if (vocabSize > 0 && outside !== undefined) {
      throw invalid(
        `\`logit_bias\` names token ${outside}; the model has ${vocabSize} tokens`,
        'logit_bias',
        'invalid_value',
      );
    }
    const input: PromptInput = {
      messages: request.messages,
      escaped: request.escaped,
      splits: request.images.map((i) => i.split),
      imageSeqLen: this.o.imageSeqLen,
    };
    // A long prompt would hold the event loop (and every other request) while it is templated
    // and tokenized: it goes to a thread.
    const offload = this.o.prompts !== undefined && request.textChars > INLINE_PROMPT_CHARS;
    this.o.onPrompt?.(offload ? 'pool' : 'inline');
    const ids = offload
      ? await this.o.prompts!.ids(input, ctx.signal)
      : promptIds({ tokenizer: this.o.tokenizer, template: this.o.template }, input);

    const asked = request.maxTokens;
    if (maxContext > 0 && (ids.length >= maxContext || ids.length + asked > maxContext)) {
      throw invalid(
        ids.length >= maxContext
          ? `the prompt has ${ids.length} tokens (images included); the maximum context is ${maxContext} tokens, prompt and answer together`
          : `the prompt (${ids.length} tokens, images included) + \`max_tokens\` (${asked}) exceed the maximum context of ${maxContext} tokens`,
        'messages',
        'context_length_exceeded',
      );
    }
    return ids;
  }

  /** The decoders' limits, from their Info, asked once and again every minute. */
  async #decoderLimits(ctx: CallContext): Promise<DecoderLimits> {
    if (Date.now() - this.#limits.at < LIMITS_TTL_MS) return this.#limits;
    try {
      const info = await this.o.stages.decoderInfo({
        ...ctx,
        deadline: Math.min(ctx.deadline, Date.now() + 2000),
      });
      this.#limits = {
        maxContext: info.maxContext,
        maxNewTokens: info.maxNewTokens,
        vocabSize: info.vocabSize,
        at: Date.now(),
      };
    } catch {
      // The request itself will meet the same decoder and get its answer.
    }
    return this.#limits;
  }
}
