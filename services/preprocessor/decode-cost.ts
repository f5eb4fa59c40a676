// What preprocessing one image costs in memory, from its header alone (sharp's metadata()
// reads it without decoding a pixel), so an image is admitted only when that fits the budget.
//
// The pipeline (services/model/image: decode.ts, pipeline.ts) holds, at its peak:
//
//   input        the encoded bytes (the worker's copy)
//   frame        the decoder's whole-frame buffer, for decoders that need one: GIF (RGBA),
//                WebP, AVIF, interlaced PNG (W×H×channels×bytes per sample); baseline and
//                progressive JPEG, non-interlaced PNG and TIFF stream into the output
//   raw          libvips' raw output: RGB (3), GIF as RGBA (4), CMYK (channels), 16-bit grey (2)
//   rgb          PIL's conversion to RGB (3) for CMYK, 16-bit grey and GIF
//   oriented     the EXIF rotation's copy (3), when the orientation is 2..8
//   resize       the RGB image copied into wasm memory (3), one pass's intermediate (rows of
//                the crop × output width × 3), and each sub-image twice (wasm, then JS)
//
// all per pixel of the first frame (only it is decoded; `pages` does not multiply). The
// peaks measured (VmHWM, libvips cache off) for 12-megapixel images of each kind were 57-92%
// of this estimate: JPEG 87 of 98 MiB, CMYK JPEG 138/149, rotated JPEG 122/133, PNG 91/113,
// interlaced PNG 85/148, 16-bit grey PNG 112/137, RGBA16 PNG 104/122, palette PNG 91/107,
// GIF 134/200, WebP 120/132, WebP with alpha 131/146, TIFF 82/98; decode-cost.test.ts
// checks a few kinds against a child process's peak.
import sharp, { type Metadata } from 'sharp';
import { resizeOutputSize, sniffImageFormat, type ImageProcessorConfig } from '../model/index.js';

/** Bytes per sample of each libvips band format. */
const SAMPLE_BYTES: Record<string, number> = {
  uchar: 1,
  char: 1,
  ushort: 2,
  short: 2,
  uint: 4,
  int: 4,
  float: 4,
  complex: 8,
  double: 8,
  dpcomplex: 16,
};

/** The header fields the estimate reads (a subset of sharp's Metadata). */
export type ImageHeader = Pick<
  Metadata,
  'format' | 'width' | 'height' | 'channels' | 'depth' | 'space' | 'orientation' | 'isProgressive'
> & { xmp?: unknown };

export interface DecodeCost {
  /** Bytes the worker holds at its peak for this image, the encoded input included. */
  bytes: number;
  /** The parts, for logs and tests. */
  parts: {
    input: number;
    frame: number;
    raw: number;
    rgb: number;
    oriented: number;
    resize: number;
  };
}

type Geometry = Pick<
  ImageProcessorConfig,
  'doImageSplitting' | 'doResize' | 'shortestEdge' | 'longestEdge'
>;

/** The memory one image costs to preprocess; see the file comment for what is counted. */
export function decodeCost(
  header: ImageHeader,
  inputBytes: number,
  config: Geometry,
  split: boolean = config.doImageSplitting,
): DecodeCost {
  const width = Math.max(1, header.width ?? 1);
  const height = Math.max(1, header.height ?? 1);
  const pixels = width * height;
  const channels = Math.max(1, header.channels ?? 3);
  const sample = SAMPLE_BYTES[header.depth ?? 'uchar'] ?? 8;
  const format = header.format ?? '';
  const gif = format === 'gif';
  const cmyk = header.space === 'cmyk';
  const grey16 = channels <= 2 && sample === 2;

  const wholeFrame =
    gif ||
    format === 'webp' ||
    format === 'heif' ||
    (format === 'png' && header.isProgressive === true);
  const frame = wholeFrame ? pixels * Math.max(channels, gif ? 4 : 0) * sample : 0;
  const rawChannels = gif ? 4 : cmyk ? channels : grey16 ? 2 : 3;
  const raw = pixels * rawChannels;
  const rgb = gif || cmyk || grey16 ? pixels * 3 : 0;
  // The orientation may also come from XMP (decode.ts effectiveOrientation): count it then too.
  const orientation = header.orientation ?? 1;
  const oriented = (orientation >= 2 && orientation <= 8) || header.xmp ? pixels * 3 : 0;
  // Rotations 5..8 swap the sides before the split and the resize.
  const [h, w] = orientation >= 5 && orientation <= 8 ? [width, height] : [height, width];
  return {
    bytes: inputBytes + frame + raw + rgb + oriented + resizeCost(h, w, config, split),
    parts: {
      input: inputBytes,
      frame,
      raw,
      rgb,
      oriented,
      resize: resizeCost(h, w, config, split),
    },
  };
}

/** The split and resize of an upright h × w RGB image (pipeline.ts resizeSubImages). */
function resizeCost(h: number, w: number, config: Geometry, split: boolean): number {
  const image = h * w * 3;
  const crops = split
    ? [
        [Math.floor(h / 2), Math.floor(w / 2)],
        [Math.floor(h / 2), w - Math.floor(w / 2)],
        [h - Math.floor(h / 2), Math.floor(w / 2)],
        [h - Math.floor(h / 2), w - Math.floor(w / 2)],
        [h, w],
      ]
    : [[h, w]];
  // Without resizing the pieces are copied out (splitImage) and laid out planar (toChw).
  if (!config.doResize) return split ? image * 3 : image;
  let outputs = 0;
  let intermediate = 0;
  for (const [ch, cw] of crops) {
    const out = resizeOutputSize(Math.max(1, ch!), Math.max(1, cw!), config);
    outputs += out.height * out.width * 3;
    // Either pass order: the first pass's output keeps one side of the input.
    intermediate = Math.max(intermediate, Math.max(ch! * out.width, cw! * out.height) * 3);
  }
  return image + intermediate + 2 * outputs;
}

/**
 * The header of an image in an accepted format, read without decoding it; undefined when the
 * bytes are not one (the worker then refuses them with the reason, at the cost of the input).
 */
export async function readImageHeader(bytes: Uint8Array): Promise<Metadata | undefined> {
  if (sniffImageFormat(bytes).format === undefined) return undefined;
  try {
    const input = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return await sharp(input, { limitInputPixels: false }).metadata();
  } catch {
    return undefined;
  }
}
