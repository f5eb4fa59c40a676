/** Why an image was refused; stable values for metrics and error mapping. */
export type ImageDecodeReason =
  | 'empty'
  | 'too_large'
  | 'too_many_pixels'
  | 'too_many_frames'
  | 'unsupported_format'
  | 'corrupt'
  | 'truncated'
  | 'timeout';

/**
 * The one error the decoder throws: the image bytes cannot be turned into pixels within the
 * limits. `reason` is for machines; the message names the cause, the limit and the value.
 */
export class ImageDecodeError extends Error {
  override readonly name = 'ImageDecodeError';

  constructor(
    readonly reason: ImageDecodeReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
