/** What PIL uses to colour the pixels of a GIF's first frame that libvips leaves transparent. */
export interface GifFirstFrame {
  /** RGB triplets of the first frame's colour table (local, else global); may be empty. */
  palette: Uint8Array;
  /** The first frame's transparent colour index, if its graphic control block sets one. */
  transparentIndex: number | undefined;
  /** The rectangle the first frame covers on the logical screen. */
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * Reads the header blocks of a GIF up to its first image descriptor, without decoding any
 * pixels. Returns undefined when the structure cannot be followed (the decoder reports it).
 *
 * ```
 * 'GIF89a' | screen descriptor (7) | [global colour table] |
 *   { extension: 21 <label> <sub-blocks> } | image descriptor: 2C x y w h flags | [local table]
 * graphic control extension (label F9): flags bit 0 = transparency, byte 3 = its index
 * ```
 */
export function readGifFirstFrame(bytes: Uint8Array): GifFirstFrame | undefined {
  if (bytes.length < 13) return undefined;
  let p = 13;
  const screenFlags = bytes[10]!;
  let palette = new Uint8Array(0);
  if (screenFlags & 0x80) {
    const size = 3 << ((screenFlags & 7) + 1);
    if (p + size > bytes.length) return undefined;
    palette = bytes.slice(p, p + size);
    p += size;
  }
  let transparentIndex: number | undefined;
  while (p < bytes.length) {
    const block = bytes[p++]!;
    if (block === 0x21) {
      const label = bytes[p++];
      if (label === undefined) return undefined;
      let first = true;
      for (;;) {
        const len = bytes[p++];
        if (len === undefined) return undefined;
        if (len === 0) break;
        if (p + len > bytes.length) return undefined;
        // Like PIL: a graphic control block that sets a transparent index overrides any
        // earlier one; one without the flag leaves it as it was.
        if (label === 0xf9 && first && len >= 4 && bytes[p]! & 1) transparentIndex = bytes[p + 3]!;
        first = false;
        p += len;
      }
    } else if (block === 0x2c) {
      if (p + 9 > bytes.length) return undefined;
      const u16 = (i: number) => bytes[p + i]! | (bytes[p + i + 1]! << 8);
      const rect = { left: u16(0), top: u16(2), width: u16(4), height: u16(6) };
      const flags = bytes[p + 8]!;
      p += 9;
      if (flags & 0x80) {
        const size = 3 << ((flags & 7) + 1);
        if (p + size > bytes.length) return undefined;
        palette = bytes.slice(p, p + size);
      }
      return { palette, transparentIndex, ...rect };
    } else {
      return undefined; // trailer (3B) before any image, or garbage
    }
  }
  return undefined;
}

/**
 * PIL's colour for the pixels of a GIF's first frame that hold no frame colour: those of the
 * transparent index, and the canvas around a frame smaller than the screen. PIL's canvas
 * starts filled with the transparent index (index 0 when there is none) and
 * `convert("RGB")` ignores transparency, so they show that palette entry. Entries past the
 * end of the table are black, as in PIL's palette.
 */
export function gifBackgroundColour(frame: GifFirstFrame): [number, number, number] {
  const index = frame.transparentIndex ?? 0;
  if (index * 3 + 3 > frame.palette.length) return [0, 0, 0];
  return [frame.palette[index * 3]!, frame.palette[index * 3 + 1]!, frame.palette[index * 3 + 2]!];
}
