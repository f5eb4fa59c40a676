// The errors of the text side. Each names what is wrong and where, so a bad checkpoint
// directory or a bad request reads clearly in a log line.

/** A tokenizer, chat template or generation config file is missing, unreadable or wrong. */
export class TextFileError extends Error {
  override readonly name = 'TextFileError';
}

/** The `<image>` placeholders of a prompt do not fit the images given with it. */
export class ImagePromptError extends Error {
  override readonly name = 'ImagePromptError';
}

/** A chat template failed to render, or the messages do not have the shape it needs. */
export class ChatTemplateError extends Error {
  override readonly name = 'ChatTemplateError';
}
