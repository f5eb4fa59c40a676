// The text side of the Idefics2 processor (what runs before and after the language model):
// tokenizer, chat template, image prompt expansion, EOS and banned ids.
export {
  ChatTemplate,
  type ChatContentPart,
  type ChatMessage,
  type RenderOptions,
  type TemplateSpecialTokens,
  loadChatTemplate,
  renderChatTemplate,
} from './chat-template.js';
export { badWordsIds, type EosOptions, eosTokenIds } from './generation-config.js';
export {
  END_OF_UTTERANCE_TOKEN,
  type ExpandImagePromptOptions,
  FAKE_IMAGE_TOKEN,
  IMAGE_TOKEN,
  countImagePlaceholders,
  expandImagePrompt,
  imageTokenCount,
} from './image-prompt.js';
export { ChatTemplateError, ImagePromptError, TextFileError } from './text-error.js';
export {
  type DecodeOptions,
  type EncodeOptions,
  TextTokenizer,
  loadTokenizer,
} from './tokenizer.js';
