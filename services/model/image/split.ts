import type { RgbImage } from './rgb-image.js';

/** Copies rows [y0, y1) and columns [x0, x1) into a new image. */
export function cropImage(img: RgbImage, y0: number, y1: number, x0: number, x1: number): RgbImage {
  const height = y1 - y0;
  const width = x1 - x0;
  const rowBytes = width * 3;
  const srcStride = img.width * 3;
  const data = new Uint8Array(height * rowBytes);
  for (let y = 0; y < height; y++) {
    const src = (y0 + y) * srcStride + x0 * 3;
    data.set(img.data.subarray(src, src + rowBytes), y * rowBytes);
  }
  return { height, width, data };
}

/**
 * Image splitting (docs/model.md §7 step 5), applied to the original-resolution image before
 * any resize. With `midH = floor(H / 2)` and `midW = floor(W / 2)`:
 *
 * ```
 *   +------+------+
 *   |  0   |  1   |   rows [0, midH)       0 = top-left, 1 = top-right
 *   +------+------+
 *   |  2   |  3   |   rows [midH, H)       2 = bottom-left, 3 = bottom-right
 *   +------+------+
 *   cols [0,midW) [midW,W)                 4 = the original image, last
 * ```
 *
 * The original is returned as the same object (not copied). As in the reference, an image
 * 1 pixel wide (or high) gives crops 0 pixels wide (or high); resizeBilinear turns those
 * into black images, as PIL does.
 */
export function splitImage(img: RgbImage): RgbImage[] {
  const { height, width } = img;
  const midH = Math.floor(height / 2);
  const midW = Math.floor(width / 2);
  return [
    cropImage(img, 0, midH, 0, midW),
    cropImage(img, 0, midH, midW, width),
    cropImage(img, midH, height, 0, midW),
    cropImage(img, midH, height, midW, width),
    img,
  ];
}
