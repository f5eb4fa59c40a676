import { join } from 'node:path';

import { Template } from '@huggingface/jinja';

import { type JsonObject, readJsonObject, readTextFile, tokenContent } from './read-json.js';
import { ChatTemplateError, TextFileError } from './text-error.js';

/** One item of a message's content, in Idefics2's format. */
export type ChatContentPart = { type: 'text'; text: string } | { type: 'image' };

export interface ChatMessage {
  /** `user`, `assistant` or `system`; the Idefics2 template capitalises it. */
  role: string;
  content: readonly ChatContentPart[];
}

export interface RenderOptions {
  /** End with the prompt for the assistant's turn (`Assistant:` for Idefics2). */
  addGenerationPrompt?: boolean;
}

/** Special tokens a template may use (`{{ bos_token }}`); Idefics2's uses none. */
export type TemplateSpecialTokens = Partial<
  Record<'bos_token' | 'eos_token' | 'pad_token' | 'unk_token', string>
>;

/** A checkpoint's chat template, parsed once, rendered per request. */
export class ChatTemplate {
  private readonly template: Template;

  constructor(
    /** The Jinja source. */
    readonly source: string,
    private readonly specialTokens: TemplateSpecialTokens = {},
  ) {
    try {
      this.template = new Template(source);
    } catch (error) {
      throw new ChatTemplateError(`cannot parse the chat template: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /**
   * The prompt text, as `processor.apply_chat_template(messages, tokenize=False)`: one
   * `<image>` placeholder per image item, no BOS (the tokenizer adds it).
   */
  render(
    messages: readonly ChatMessage[],
    { addGenerationPrompt = false }: RenderOptions = {},
  ): string {
    checkMessages(messages);
    try {
      return this.template.render({
        ...this.specialTokens,
        messages,
        add_generation_prompt: addGenerationPrompt,
      });
    } catch (error) {
      throw new ChatTemplateError(`the chat template failed: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }
}

/** Renders `source` once; prefer `loadChatTemplate` or `new ChatTemplate` for reuse. */
export function renderChatTemplate(
  source: string,
  messages: readonly ChatMessage[],
  options: RenderOptions = {},
): string {
  return new ChatTemplate(source).render(messages, options);
}

/**
 * The chat template of a checkpoint directory, from the first of: `chat_template.jinja`,
 * `chat_template.json` (`chat_template` key, the processor's file), `tokenizer_config.json`
 * (`chat_template`: a string, or a list of `{ name, template }` where `default` is used).
 */
export function loadChatTemplate(dir: string): ChatTemplate {
  const tokenizerConfigPath = join(dir, 'tokenizer_config.json');
  const tokenizerConfig = readJsonObject(tokenizerConfigPath, { optional: true }) ?? {};
  const specialTokens: TemplateSpecialTokens = {};
  for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const) {
    const content = tokenContent(tokenizerConfig[key]);
    if (content !== undefined) specialTokens[key] = content;
  }

  const jinjaPath = join(dir, 'chat_template.jinja');
  const jinja = readTextFile(jinjaPath, { optional: true });
  if (jinja !== undefined) return new ChatTemplate(jinja, specialTokens);

  const jsonPath = join(dir, 'chat_template.json');
  const json = readJsonObject(jsonPath, { optional: true });
  if (json !== undefined) {
    return new ChatTemplate(templateField(json, jsonPath), specialTokens);
  }

  if (tokenizerConfig.chat_template !== undefined) {
    return new ChatTemplate(templateField(tokenizerConfig, tokenizerConfigPath), specialTokens);
  }
  throw new TextFileError(
    `${dir} has no chat template: looked for chat_template.jinja, chat_template.json and ` +
      '`chat_template` in tokenizer_config.json',
  );
}

function templateField(json: JsonObject, path: string): string {
  const value = json.chat_template;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    for (const entry of value as unknown[]) {
      const { name, template } = (entry ?? {}) as { name?: unknown; template?: unknown };
      if (name === 'default' && typeof template === 'string') return template;
    }
    throw new TextFileError(`${path}: \`chat_template\` is a list without a \`default\` entry`);
  }
  throw new TextFileError(
    `${path}: \`chat_template\` must be a string or a list of { name, template }, got ` +
      JSON.stringify(value),
  );
}

/** The Idefics2 template reads `content[0].type`: each message needs a non-empty list. */
function checkMessages(messages: readonly ChatMessage[]): void {
  for (const [i, message] of messages.entries()) {
    if (typeof message.role !== 'string' || message.role === '') {
      throw new ChatTemplateError(`messages[${i}].role must be a non-empty string`);
    }
    if (!Array.isArray(message.content) || message.content.length === 0) {
      throw new ChatTemplateError(`messages[${i}].content must be a non-empty list`);
    }
    for (const [j, part] of message.content.entries()) {
      const ok = (part.type === 'text' && typeof part.text === 'string') || part.type === 'image';
      if (!ok) {
        throw new ChatTemplateError(
          `messages[${i}].content[${j}] must be { type: 'text', text } or { type: 'image' }, ` +
            `got ${JSON.stringify(part)}`,
        );
      }
    }
  }
}
