import { type CropResize, type PassOrder, resizeBilinear, resizeCropsChw } from './bilinear.js';
import { type DecodeLimits, decodeImage } from './decode.js';
import type { SubImage } from './pixel-values.js';
import type { ImageProcessorConfig } from './processor-config.js';
import { resizeOutputSize } from './resize-rule.js';
import { type RgbImage, toChw } from './rgb-image.js';
import type { ImageFormat } from './sniff-format.js';
import { splitImage } from './split.js';

type GeometrySettings = Pick<
  ImageProcessorConfig,
  'doImageSplitting' | 'doResize' | 'shortestEdge' | 'longestEdge'
>;

export interface PreprocessOptions {
  config: ImageProcessorConfig;
  /** Split into 4 crops + the original; defaults to `config.doImageSplitting`. */
  split?: boolean;
  limits: DecodeLimits;
  /** Resampling pass order of the Pillow to match; default `pillow12`. */
  passOrder?: PassOrder;
}

export interface PreprocessedImage {
  /** In model order: with splitting TL, TR, BL, BR, then the whole image. */
  subImages: SubImage[];
  split: boolean;
  /** The decoded image, upright (after EXIF orientation). */
  source: { format: ImageFormat; height: number; width: number };
  /** `<image>` tokens the prompt needs for this image: sub-images * imageSeqLen. */
  imageTokens: number;
}

/**
 * The geometric part of the image processor on a decoded image (docs/model.md §7 steps 5-6):
 * optional split of the original-resolution image, then each piece resized on its own by
 * the Idefics2 size rule with PIL's bilinear filter. Returns uint8 HWC images.
 */
export function processGeometry(
  img: RgbImage,
  {
    config,
    split = config.doImageSplitting,
    passOrder,
  }: { config: GeometrySettings; split?: boolean; passOrder?: PassOrder },
): RgbImage[] {
  const pieces = split ? splitImage(img) : [img];
  if (!config.doResize) return pieces;
  return pieces.map((piece) => {
    const size = resizeOutputSize(piece.height, piece.width, config);
    return resizeBilinear(piece, size.height, size.width, { passOrder });
  });
}

/**
 * `processGeometry` (with resizing) + `toChw` in one step, without making the crops: the
 * resize reads each piece of splitImage's layout in place and writes CHW directly. Same
 * pixels as the two steps, which pipeline.test.ts checks.
 */
function resizeSubImages(
  img: RgbImage,
  config: GeometrySettings,
  split: boolean,
  passOrder: PassOrder | undefined,
): SubImage[] {
  const { height, width } = img;
  const rects: [y0: number, y1: number, x0: number, x1: number][] = [[0, height, 0, width]];
  if (split) {
    // splitImage's pieces, in its order: TL, TR, BL, BR, then the whole image.
    const midH = Math.floor(height / 2);
    const midW = Math.floor(width / 2);
    rects.unshift(
      [0, midH, 0, midW],
      [0, midH, midW, width],
      [midH, height, 0, midW],
      [midH, height, midW, width],
    );
  }
  const crops: CropResize[] = rects.map(([y0, y1, x0, x1]) => ({
    y0,
    y1,
    x0,
    x1,
    ...resizeOutputSize(y1 - y0, x1 - x0, config),
  }));
  return resizeCropsChw(img, crops, { passOrder }).map((pixels, i) => ({
    height: crops[i]!.height,
    width: crops[i]!.width,
    pixels,
  }));
}

/**
 * The preprocessor's work for one image: decode (with limits) -> split -> resize -> uint8
 * CHW sub-images. Rescaling and normalization are left to the consumer (toPixelValues, or
 * the encoder graph), so the sub-images travel as compact uint8.
 *
 * @throws ImageDecodeError when the bytes are refused or cannot be decoded.
 */
export async function preprocessImage(
  bytes: Uint8Array,
  { config, split = config.doImageSplitting, limits, passOrder }: PreprocessOptions,
): Promise<PreprocessedImage> {
  const { image, format } = await decodeImage(bytes, limits);
  const subImages = config.doResize
    ? resizeSubImages(image, config, split, passOrder)
    : processGeometry(image, { config, split, passOrder }).map((piece) => ({
        height: piece.height,
        width: piece.width,
        pixels: toChw(piece),
      }));
  return {
    subImages,
    split,
    source: { format, height: image.height, width: image.width },
    imageTokens: subImages.length * config.imageSeqLen,
  };
}
