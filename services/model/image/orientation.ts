import type { RgbImage } from './rgb-image.js';

/**
 * The EXIF orientation PIL's `ImageOps.exif_transpose` acts on: the EXIF (or TIFF) tag when
 * present, else `tiff:Orientation` in the XMP packet, matched with PIL's own pattern
 * `tiff:Orientation(="|>)([0-9])`. 1 when neither is there.
 */
export function effectiveOrientation(
  exifOrientation: number | undefined,
  xmp?: Uint8Array,
): number {
  if (exifOrientation !== undefined) return exifOrientation;
  if (xmp) {
    const match = /tiff:Orientation(="|>)([0-9])/.exec(Buffer.from(xmp).toString('latin1'));
    if (match) return Number(match[2]);
  }
  return 1;
}

/**
 * `exif_transpose`: the transpose that makes an image with EXIF orientation `orientation`
 * upright. Values other than 2..8 leave the image as it is.
 *
 * ```
 * 2 flip left-right   3 rotate 180   4 flip top-bottom   5 transpose
 * 6 rotate 90 clockwise   7 transverse   8 rotate 90 counter-clockwise
 * ```
 */
export function applyOrientation(img: RgbImage, orientation: number): RgbImage {
  if (!Number.isInteger(orientation) || orientation < 2 || orientation > 8) return img;
  const { height: h, width: w, data } = img;
  const swap = orientation >= 5;
  const outH = swap ? w : h;
  const outW = swap ? h : w;
  const out = new Uint8Array(data.length);
  // For output (y, x): input pixel index = base(y) + x * step. The rotations (5..8) read the
  // input down its columns, so the output is walked in square tiles to stay in cache.
  const tile = swap ? 64 : outW;
  for (let tileY = 0; tileY < outH; tileY += tile) {
    const yEnd = Math.min(outH, tileY + tile);
    for (let tileX = 0; tileX < outW; tileX += tile) {
      const xEnd = Math.min(outW, tileX + tile);
      for (let y = tileY; y < yEnd; y++) {
        let base: number;
        let step: number;
        switch (orientation) {
          case 2: // (y, w-1-x)
            base = y * w + w - 1;
            step = -1;
            break;
          case 3: // (h-1-y, w-1-x)
            base = (h - 1 - y) * w + w - 1;
            step = -1;
            break;
          case 4: // (h-1-y, x)
            base = (h - 1 - y) * w;
            step = 1;
            break;
          case 5: // (x, y)
            base = y;
            step = w;
            break;
          case 6: // (h-1-x, y)
            base = (h - 1) * w + y;
            step = -w;
            break;
          case 7: // (h-1-x, w-1-y)
            base = (h - 1) * w + (w - 1 - y);
            step = -w;
            break;
          default: // 8: (x, w-1-y)
            base = w - 1 - y;
            step = w;
        }
        let o = (y * outW + tileX) * 3;
        for (let x = tileX, s = base + tileX * step; x < xEnd; x++, s += step) {
          const i = s * 3;
          out[o++] = data[i]!;
          out[o++] = data[i + 1]!;
          out[o++] = data[i + 2]!;
        }
      }
    }
  }
  return { height: outH, width: outW, data: out };
}
