// PIL's conversions to 8-bit RGB for the pixel layouts where libvips' own differ
// (`Image.convert("RGB")` after the decoder, Pillow's Convert.c and GifImagePlugin).
import { gifBackgroundColour, readGifFirstFrame } from './gif-first-frame.js';

/**
 * PIL's `convert("CMYK" -> "RGB")` (Convert.c `cmyk2rgb`), a naive formula with no colour
 * management: `R = CLIP8(nk - MULDIV255(C, nk))` with `nk = 255 - K` and
 * `MULDIV255(a, b) = ((t >> 8) + t) >> 8, t = a * b + 128`; likewise G from M, B from Y.
 */
export function cmykToRgb(data: Uint8Array, pixels: number, channels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0, s = 0, o = 0; i < pixels; i++, s += channels) {
    const nk = 255 - data[s + 3]!;
    for (let c = 0; c < 3; c++) {
      const t = data[s + c]! * nk + 128;
      const v = nk - (((t >> 8) + t) >> 8);
      out[o++] = v < 0 ? 0 : v;
    }
  }
  return out;
}

/** PIL's `I;16 -> RGB` (Convert.c `I16_RGB`): each grey level clipped at 255, replicated. */
export function grey16ToRgb(data: Uint8Array, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  for (let i = 0, o = 0; i < pixels; i++) {
    const v = view.getUint16(i * 2, true);
    const g = v > 255 ? 255 : v;
    out[o++] = g;
    out[o++] = g;
    out[o++] = g;
  }
  return out;
}

/**
 * A GIF's first frame as PIL sees it. libvips paints transparent-index pixels as alpha 0 and
 * the canvas around a frame smaller than the screen as opaque black; PIL shows a palette
 * colour in both places (see gifBackgroundColour).
 */
export function gifToRgb(
  data: Uint8Array,
  width: number,
  height: number,
  bytes: Uint8Array,
): Uint8Array {
  const frame = readGifFirstFrame(bytes);
  const [br, bg, bb] = frame ? gifBackgroundColour(frame) : [0, 0, 0];
  const x0 = frame?.left ?? 0;
  const y0 = frame?.top ?? 0;
  const x1 = frame ? x0 + frame.width : width;
  const y1 = frame ? y0 + frame.height : height;
  const out = new Uint8Array(width * height * 3);
  for (let y = 0, s = 0, o = 0; y < height; y++) {
    const rowInside = y >= y0 && y < y1;
    for (let x = 0; x < width; x++, s += 4) {
      if (data[s + 3] === 0 || !rowInside || x < x0 || x >= x1) {
        out[o++] = br;
        out[o++] = bg;
        out[o++] = bb;
      } else {
        out[o++] = data[s]!;
        out[o++] = data[s + 1]!;
        out[o++] = data[s + 2]!;
      }
    }
  }
  return out;
}
