// A chat request's prompt as token ids: the chat template, the image runs, the tokenizer.
// The same function runs on the event loop for ordinary prompts and in the prompt pool's
// threads (prompt-pool.ts) for long ones, so both give the same ids.
import {
  type ChatMessage,
  type ChatTemplate,
  expandImagePrompt,
  type TextTokenizer,
} from '../model/text-processor/index.js';

export interface PromptInput {
  /** Messages whose text went through `tokenizer.escapeLiteral`. */
  messages: ChatMessage[];
  /** Whether any text was escaped (then the prompt is encoded with its literals). */
  escaped: boolean;
  /** Per image, in order: whether it was split (its run holds 5 sub-images, else 1). */
  splits: boolean[];
  imageSeqLen: number;
}

export function promptIds(
  { tokenizer, template }: { tokenizer: TextTokenizer; template: ChatTemplate },
  { messages, escaped, splits, imageSeqLen }: PromptInput,
): number[] {
  const text = template.render(messages, { addGenerationPrompt: true });
  const expanded = expandImagePrompt(text, { imageSeqLen, splits });
  return escaped ? tokenizer.encodeWithLiterals(expanded) : tokenizer.encode(expanded);
}
