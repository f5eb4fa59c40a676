import sharp, { type Metadata, type OutputInfo, type Sharp } from 'sharp';
import { ImageDecodeError } from './decode-error.js';
import { applyOrientation, effectiveOrientation } from './orientation.js';
import { cmykToRgb, gifToRgb, grey16ToRgb } from './pil-rgb.js';
import type { RgbImage } from './rgb-image.js';
import { ACCEPTED_FORMATS, type ImageFormat, sniffImageFormat } from './sniff-format.js';

export interface DecodeLimits {
  /** Largest accepted file, in bytes. */
  maxBytes: number;
  /**
   * Largest accepted width * height of the (first) frame, checked from the header before any
   * pixel is decoded, so decompression bombs cost nothing.
   */
  maxPixels: number;
  /** Files declaring more pages/frames than this are refused (only the first is decoded). */
  maxFrames: number;
  /** Abandon a decode running longer than this (rounded up to whole seconds). */
  timeoutSeconds?: number;
}

export interface DecodedImage {
  /** Upright (EXIF orientation applied), 8-bit RGB. */
  image: RgbImage;
  format: ImageFormat;
}

/** sharp's name for each accepted container. */
const SHARP_FORMAT: Record<ImageFormat, string> = {
  jpeg: 'jpeg',
  png: 'png',
  gif: 'gif',
  webp: 'webp',
  tiff: 'tiff',
  avif: 'heif',
};

const FORMAT_NAMES = ACCEPTED_FORMATS.map((f) => (f === 'webp' ? 'WebP' : f.toUpperCase())).join(
  ', ',
);

/**
 * How the decoded pixels become PIL's `convert("RGB")` (see toPilRgb):
 * - `rgb`: libvips' own conversion already agrees (8-bit RGB/grey/palette, alpha dropped;
 *   16-bit RGB(A) and grey+alpha keep the high byte);
 * - `cmyk`: raw CMYK, converted with PIL's naive formula rather than an ICC transform;
 * - `grey16`: raw 16-bit grey, clipped at 255 as PIL's I;16 -> RGB does;
 * - `gif`: RGBA, with the transparent pixels recoloured as PIL leaves them.
 */
type PixelRoute = 'rgb' | 'cmyk' | 'grey16' | 'gif';

/**
 * A 16-bit greyscale PNG (IHDR colour type 0) opens in PIL as I;16 even with a tRNS chunk
 * (which libvips turns into an alpha channel); grey+alpha (type 4) opens as RGBA instead.
 */
function isGrey16Png(bytes: Uint8Array): boolean {
  return bytes.length > 25 && bytes[24] === 16 && bytes[25] === 0;
}

function chooseRoute(format: ImageFormat, meta: Metadata, bytes: Uint8Array): PixelRoute {
  if (format === 'gif') return 'gif';
  if (meta.space === 'cmyk') return 'cmyk';
  if (format === 'png' ? isGrey16Png(bytes) : meta.depth === 'ushort' && meta.channels === 1) {
    return 'grey16';
  }
  return 'rgb';
}

function firstLine(message: string): string {
  const lines = message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  // libheif puts lines of seek noise before its real message; skip them.
  const line = lines.find((l) => !/^source: bad seek/.test(l)) ?? lines[0] ?? 'unknown error';
  return line.length > 200 ? `${line.slice(0, 200)}...` : line;
}

const TRUNCATION_MESSAGE =
  /premature end|unexpected end|end of (file|stream|data)|truncat|read error at scanline|outside of file bounds|not enough data|bad seek/i;

/** Whether a failed decode is best explained by missing bytes at the end of the file. */
function looksTruncated(format: ImageFormat, bytes: Uint8Array, message: string): boolean {
  if (TRUNCATION_MESSAGE.test(message)) return true;
  const n = bytes.length;
  switch (format) {
    case 'png': // the last chunk must be IEND
      return n < 12 || String.fromCharCode(...bytes.subarray(n - 8, n - 4)) !== 'IEND';
    case 'jpeg': // ends with the EOI marker
      return bytes[n - 2] !== 0xff || bytes[n - 1] !== 0xd9;
    case 'gif': // ends with the trailer
      return bytes[n - 1] !== 0x3b;
    case 'webp': {
      const riffSize =
        n >= 8 ? (bytes[4]! | (bytes[5]! << 8) | (bytes[6]! << 16) | (bytes[7]! << 24)) >>> 0 : 0;
      return n < riffSize + 8;
    }
    default:
      return false;
  }
}

/** Every libvips failure becomes an ImageDecodeError with a stable reason. */
export function toImageDecodeError(
  err: unknown,
  format: ImageFormat,
  bytes: Uint8Array,
  limits: DecodeLimits,
): ImageDecodeError {
  if (err instanceof ImageDecodeError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const cause = firstLine(message);
  if (/exceeds pixel limit/i.test(message)) {
    return new ImageDecodeError(
      'too_many_pixels',
      `image is over the limit of ${limits.maxPixels} pixels (${cause})`,
      { cause: err },
    );
  }
  if (/timeout/i.test(message)) {
    return new ImageDecodeError(
      'timeout',
      `decoding the ${format} image took longer than the limit of ${limits.timeoutSeconds} s`,
      { cause: err },
    );
  }
  if (looksTruncated(format, bytes, message)) {
    return new ImageDecodeError(
      'truncated',
      `${format} image is truncated (${bytes.length} bytes): ${cause}`,
      { cause: err },
    );
  }
  return new ImageDecodeError('corrupt', `${format} image is corrupt: ${cause}`, { cause: err });
}

/** Checks limits and agreement with the sniffed format, from the header alone. */
function checkHeader(format: ImageFormat, meta: Metadata, limits: DecodeLimits): void {
  const expected = SHARP_FORMAT[format];
  if (meta.format !== expected || (format === 'avif' && meta.compression !== 'av1')) {
    const seen = meta.format === 'heif' ? `heif/${meta.compression ?? 'unknown'}` : meta.format;
    throw new ImageDecodeError(
      'unsupported_format',
      `image bytes start like ${format} but the decoder reads them as ${seen}; accepted formats: ${FORMAT_NAMES}`,
    );
  }
  const { width, height } = meta;
  if (!(width > 0 && height > 0)) {
    throw new ImageDecodeError(
      'corrupt',
      `${format} image declares an empty size ${width}x${height}`,
    );
  }
  const pixels = width * height;
  if (pixels > limits.maxPixels) {
    throw new ImageDecodeError(
      'too_many_pixels',
      `image is ${pixels} pixels (${width}x${height}), over the limit of ${limits.maxPixels}`,
    );
  }
  const frames = meta.pages ?? 1;
  if (frames > limits.maxFrames) {
    throw new ImageDecodeError(
      'too_many_frames',
      `image has ${frames} frames, over the limit of ${limits.maxFrames}`,
    );
  }
}

function pipelineFor(route: PixelRoute, image: Sharp): Sharp {
  switch (route) {
    case 'gif':
      return image.toColourspace('srgb').ensureAlpha().raw();
    case 'cmyk':
      return image.pipelineColourspace('cmyk').toColourspace('cmyk').raw();
    case 'grey16':
      return image.removeAlpha().toColourspace('grey16').raw({ depth: 'ushort' });
    case 'rgb':
      return image.toColourspace('srgb').removeAlpha().raw();
  }
}

function toPilRgb(
  route: PixelRoute,
  data: Uint8Array,
  info: OutputInfo,
  bytes: Uint8Array,
): Uint8Array {
  const pixels = info.width * info.height;
  const channels = { gif: 4, cmyk: 4, grey16: 1, rgb: 3 }[route];
  if (route === 'cmyk' ? info.channels < channels : info.channels !== channels) {
    throw new ImageDecodeError(
      'corrupt',
      `decoder returned ${info.channels} channels for a ${route} image, expected ${channels}`,
    );
  }
  switch (route) {
    case 'gif':
      return gifToRgb(data, info.width, info.height, bytes);
    case 'cmyk':
      return cmykToRgb(data, pixels, info.channels);
    case 'grey16':
      return grey16ToRgb(data, pixels);
    case 'rgb':
      return data;
  }
}

/**
 * Decodes an uploaded image into upright 8-bit RGB exactly as the reference's `load_image`
 * (PIL `ImageOps.exif_transpose` then `convert("RGB")`): first frame only, alpha dropped
 * (not composited), embedded ICC profiles ignored, 16-bit and CMYK data converted with PIL's
 * formulas. Nothing reaches libvips before the magic bytes are recognised and the header has
 * passed the size, pixel and frame limits.
 *
 * @throws ImageDecodeError for every refusal and every decoder failure.
 */
export async function decodeImage(bytes: Uint8Array, limits: DecodeLimits): Promise<DecodedImage> {
  if (bytes.length === 0) throw new ImageDecodeError('empty', 'image is empty (0 bytes)');
  if (bytes.length > limits.maxBytes) {
    throw new ImageDecodeError(
      'too_large',
      `image is ${bytes.length} bytes, over the limit of ${limits.maxBytes}`,
    );
  }
  const sniffed = sniffImageFormat(bytes);
  if (sniffed.format === undefined) {
    throw new ImageDecodeError(
      'unsupported_format',
      `image format not accepted: the bytes look like ${sniffed.looksLike}; accepted formats: ${FORMAT_NAMES}`,
    );
  }
  const format = sniffed.format;
  const input = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  try {
    // The header alone: no pixel is decoded here, whatever size the file declares.
    const meta = await sharp(input, { limitInputPixels: false }).metadata();
    checkHeader(format, meta, limits);
    const route = chooseRoute(format, meta, bytes);

    let decoder = sharp(input, {
      failOn: 'error',
      // The header check above is the real limit; this guards libvips' own reads as well.
      limitInputPixels: Number.isFinite(limits.maxPixels)
        ? Math.max(1, Math.floor(limits.maxPixels))
        : false,
      ignoreIcc: true,
      sequentialRead: true,
    });
    if (limits.timeoutSeconds !== undefined) {
      decoder = decoder.timeout({ seconds: Math.max(1, Math.ceil(limits.timeoutSeconds)) });
    }
    const { data, info } = await pipelineFor(route, decoder).toBuffer({ resolveWithObject: true });
    if (info.width !== meta.width || info.height !== meta.height) {
      throw new ImageDecodeError(
        'corrupt',
        `${format} image decoded to ${info.width}x${info.height}, but its header says ${meta.width}x${meta.height}`,
      );
    }
    const pixels = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const rgb = toPilRgb(route, pixels, info, bytes);
    const stored: RgbImage = { height: info.height, width: info.width, data: rgb };
    const image = applyOrientation(stored, effectiveOrientation(meta.orientation, meta.xmp));
    return { image, format };
  } catch (err) {
    throw toImageDecodeError(err, format, bytes, limits);
  }
}
