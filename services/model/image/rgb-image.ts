/**
 * An 8-bit RGB image, row-major, channels interleaved (HWC):
 *
 * ```
 * data: R G B R G B ... (width * 3 bytes per row), height rows
 * index of channel c at (y, x) = (y * width + x) * 3 + c
 * ```
 */
export interface RgbImage {
  height: number;
  width: number;
  /** HWC, RGB interleaved, length height * width * 3. */
  data: Uint8Array;
}

/** Builds an image and checks that the buffer matches the size. */
export function createRgbImage(height: number, width: number, data?: Uint8Array): RgbImage {
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new RangeError(`image size must be positive integers, got ${width}x${height}`);
  }
  const length = height * width * 3;
  if (data === undefined) return { height, width, data: new Uint8Array(length) };
  if (data.length !== length) {
    throw new RangeError(
      `image data for ${width}x${height} RGB must be ${length} bytes, got ${data.length}`,
    );
  }
  return { height, width, data };
}

/**
 * Interleaved HWC to planar CHW, the layout of `pixel_values`:
 *
 * ```
 * out: R plane (h*w) | G plane (h*w) | B plane (h*w)
 * ```
 */
export function toChw(img: RgbImage): Uint8Array {
  const { data } = img;
  const plane = img.height * img.width;
  const out = new Uint8Array(plane * 3);
  const g = plane;
  const b = plane * 2;
  for (let i = 0, j = 0; i < plane; i++, j += 3) {
    out[i] = data[j]!;
    out[g + i] = data[j + 1]!;
    out[b + i] = data[j + 2]!;
  }
  return out;
}
