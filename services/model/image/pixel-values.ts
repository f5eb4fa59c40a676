import type { ImageProcessorConfig } from './processor-config.js';

/** One resized sub-image as the preprocessor hands it on: uint8, planar. */
export interface SubImage {
  height: number;
  width: number;
  /** CHW [3, height, width] uint8. */
  pixels: Uint8Array;
}

/** The model's image inputs for one image (the reference's batch index 0). */
export interface PixelValues {
  /**
   * float32 [n, 3, height, width]; each sub-image sits in the top-left corner of its slot and
   * the rest is 0.0 (exactly zero: the model drops all-zero images, docs/model.md §10 G10).
   */
  pixelValues: Float32Array;
  /** [n, height, width]: 1 on each sub-image's real pixels, 0 on the padding. */
  pixelAttentionMask: Uint8Array;
  /** Number of sub-images, n. */
  count: number;
  /** Padded height: the largest sub-image height. */
  height: number;
  /** Padded width: the largest sub-image width. */
  width: number;
}

type NormalizeSettings = Pick<
  ImageProcessorConfig,
  'doRescale' | 'rescaleFactor' | 'doNormalize' | 'imageMean' | 'imageStd'
>;

/**
 * The float32 value of every uint8 level, per channel, computed as the reference does
 * (docs/model.md §7 steps 7-8, §10 G15):
 *
 * ```
 * rescale:   x = float32(float64(u8) * rescale_factor)
 * normalize: y = float32(float32(x - float32(mean[c])) / float32(std[c]))
 * ```
 *
 * For idefics2-8b this is (f32(u8/255) - 0.5) / 0.5, about 2 * u8 / 255 - 1.
 */
export function pixelLookupTables(
  config: NormalizeSettings,
): [Float32Array, Float32Array, Float32Array] {
  const tables: Float32Array[] = [];
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(config.imageMean[c]!);
    const std = Math.fround(config.imageStd[c]!);
    const table = new Float32Array(256);
    for (let v = 0; v < 256; v++) {
      let x = config.doRescale ? Math.fround(v * config.rescaleFactor) : v;
      if (config.doNormalize) x = Math.fround(Math.fround(x - mean) / std);
      table[v] = x;
    }
    tables.push(table);
  }
  return tables as [Float32Array, Float32Array, Float32Array];
}

/**
 * The batch canvas sub-images are padded to: the largest height and width. Checks that each
 * sub-image holds 3·h·w bytes. `caller` names the function in errors.
 */
export function paddedSize(
  subImages: readonly SubImage[],
  caller: string,
): { height: number; width: number } {
  if (subImages.length === 0) throw new RangeError(`${caller} needs at least one sub-image`);
  let height = 0;
  let width = 0;
  for (const [i, sub] of subImages.entries()) {
    if (sub.pixels.length !== 3 * sub.height * sub.width) {
      throw new RangeError(
        `sub-image ${i} is ${sub.width}x${sub.height} but holds ${sub.pixels.length} bytes, expected ${3 * sub.height * sub.width}`,
      );
    }
    height = Math.max(height, sub.height);
    width = Math.max(width, sub.width);
  }
  return { height, width };
}

/**
 * Rescales, normalizes and pads sub-images into the model's `pixel_values` and
 * `pixel_attention_mask` (docs/model.md §7 steps 7-10), bit for bit as the reference's float32
 * output for one image. Padding is bottom/right to the largest height and width, with 0.0.
 *
 * With `doPad` off the reference returns a ragged list; that is only representable here when
 * every sub-image has the same size, so other inputs are refused.
 */
export function toPixelValues(
  subImages: readonly SubImage[],
  config: NormalizeSettings & Pick<ImageProcessorConfig, 'doPad'>,
): PixelValues {
  const { height, width } = paddedSize(subImages, 'toPixelValues');
  if (!config.doPad) {
    const ragged = subImages.find((s) => s.height !== height || s.width !== width);
    if (ragged) {
      throw new RangeError(
        `do_pad is off but sub-images differ in size (${ragged.width}x${ragged.height} vs ${width}x${height})`,
      );
    }
  }
  const tables = pixelLookupTables(config);
  const plane = height * width;
  const pixelValues = new Float32Array(subImages.length * 3 * plane);
  const pixelAttentionMask = new Uint8Array(subImages.length * plane);
  for (const [i, sub] of subImages.entries()) {
    const subPlane = sub.height * sub.width;
    for (let c = 0; c < 3; c++) {
      const table = tables[c]!;
      const src = sub.pixels.subarray(c * subPlane, (c + 1) * subPlane);
      const base = (i * 3 + c) * plane;
      for (let y = 0; y < sub.height; y++) {
        let o = base + y * width;
        let s = y * sub.width;
        for (let x = 0; x < sub.width; x++) pixelValues[o++] = table[src[s++]!]!;
      }
    }
    for (let y = 0; y < sub.height; y++) {
      const o = i * plane + y * width;
      pixelAttentionMask.fill(1, o, o + sub.width);
    }
  }
  return { pixelValues, pixelAttentionMask, count: subImages.length, height, width };
}
