import { ImagePromptError } from './text-error.js';

/** The placeholder a prompt holds once per image, and the token repeated per latent. */
export const IMAGE_TOKEN = '<image>';
/** Wraps each sub-image's run of `<image>` tokens. */
export const FAKE_IMAGE_TOKEN = '<fake_token_around_image>';
/** Ends each chat turn; one of Idefics2's EOS ids during generation. */
export const END_OF_UTTERANCE_TOKEN = '<end_of_utterance>';

/** Sub-images per image when it is split: 4 crops (TL, TR, BL, BR) plus the whole image. */
const SUB_IMAGES_WHEN_SPLIT = 5;

export interface ExpandImagePromptOptions {
  /** `<image>` tokens per sub-image (the perceiver's latents): 64 for idefics2-8b. */
  imageSeqLen: number;
  /** One entry per image, in prompt order: whether that image was split into 5 sub-images. */
  splits: readonly boolean[];
}

/** How many `<image>` placeholders `text` holds (non-overlapping, like Python's `str.count`). */
export function countImagePlaceholders(text: string): number {
  return text.split(IMAGE_TOKEN).length - 1;
}

/**
 * Expands each `<image>` placeholder into the image's token run, as `Idefics2Processor`
 * does before tokenizing (docs/model.md §5), with F = `<fake_token_around_image>` and
 * I = `<image>`:
 *
 *   not split:  F I×n F
 *   split:      (F I×n F) ×5
 *
 * then every `FF` in the whole string collapses to `F` (one left-to-right pass, like
 * Python's `str.replace`), so one split image reads `F I×n F I×n F I×n F I×n F I×n F` and
 * two adjacent images share their middle F. The number of placeholders must equal the
 * number of images (`splits.length`).
 */
export function expandImagePrompt(
  text: string,
  { imageSeqLen, splits }: ExpandImagePromptOptions,
): string {
  if (!Number.isInteger(imageSeqLen) || imageSeqLen < 1) {
    throw new ImagePromptError(`\`imageSeqLen\` must be an integer >= 1, got ${imageSeqLen}`);
  }
  const pieces = text.split(IMAGE_TOKEN);
  const placeholders = pieces.length - 1;
  if (placeholders !== splits.length) {
    throw new ImagePromptError(
      `the prompt has ${placeholders} ${IMAGE_TOKEN} placeholder(s) but ${splits.length} ` +
        'image(s) were given; they must be equal',
    );
  }
  const subImage = FAKE_IMAGE_TOKEN + IMAGE_TOKEN.repeat(imageSeqLen) + FAKE_IMAGE_TOKEN;
  let expanded = pieces[0] ?? '';
  for (const [i, split] of splits.entries()) {
    expanded += subImage.repeat(split ? SUB_IMAGES_WHEN_SPLIT : 1) + (pieces[i + 1] ?? '');
  }
  return expanded.replaceAll(FAKE_IMAGE_TOKEN + FAKE_IMAGE_TOKEN, FAKE_IMAGE_TOKEN);
}

/** `<image>` tokens the expansion holds: one embedding row each (64 per sub-image). */
export function imageTokenCount({ imageSeqLen, splits }: ExpandImagePromptOptions): number {
  return splits.reduce((sum, split) => sum + imageSeqLen * (split ? SUB_IMAGES_WHEN_SPLIT : 1), 0);
}
