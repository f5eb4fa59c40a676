// Images that cost the preprocessor more than their bytes suggest, made on the spot (no
// fixtures), and the head of a gRPC message declaring an image larger than any limit: the
// hostile-input drills (test/hostile-input.test.ts) and bench:gateway's attacks
// (bench/gateway/attacks.ts) send them.
import sharp from 'sharp';

/** A JPEG of a busy pattern (quick to make, slow to decode like a photo), width × height. */
export async function patternJpeg(width: number, height: number): Promise<Buffer> {
  const data = Buffer.allocUnsafe(width * height * 3);
  let i = 0;
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++)
      for (let c = 0; c < 3; c++)
        data[i++] = (x * (3 + c) + y * (5 + 2 * c) + ((x * y) >> 7)) & 255;
  return sharp(data, { raw: { width, height, channels: 3 } })
    .jpeg()
    .toBuffer();
}

/**
 * `side` × `side` images that cost far more to decode than their bytes or their RGB pixels:
 * a CMYK JPEG (4 bytes a pixel, then converted), a palette GIF (read as an RGBA frame) and a
 * 16-bit grey PNG (2 bytes a pixel, then RGB). Flat 64-pixel blocks, made at a tenth of the
 * size and enlarged, so that they are small in bytes and quick to make (converting a large
 * image to CMYK takes libvips tens of seconds).
 */
export async function costlyImages(side: number): Promise<Array<[string, string, Buffer]>> {
  const small = Math.max(1, Math.round(side / 10));
  const data = Buffer.allocUnsafe(small * small * 3);
  let i = 0;
  for (let y = 0; y < small; y++)
    for (let x = 0; x < small; x++)
      for (let c = 0; c < 3; c++) data[i++] = ((x >> 3) * (3 + c) + (y >> 3) * (5 + 2 * c)) & 255;
  const raw = { raw: { width: small, height: small, channels: 3 as const } };
  const enlarge = { kernel: 'nearest' as const };
  const cmykSmall = await sharp(data, raw).toColourspace('cmyk').jpeg().toBuffer();
  return [
    [
      'CMYK JPEG',
      'image/jpeg',
      await sharp(cmykSmall)
        .pipelineColourspace('cmyk')
        .resize(side, side, enlarge)
        .toColourspace('cmyk')
        .jpeg()
        .toBuffer(),
    ],
    [
      'palette GIF',
      'image/gif',
      await sharp(data, raw)
        .resize(side, side, enlarge)
        .gif({ effort: 1, colours: 16, dither: 0 })
        .toBuffer(),
    ],
    [
      '16-bit grey PNG',
      'image/png',
      await sharp(data, raw)
        .resize(side, side, enlarge)
        .toColourspace('grey16')
        .png({ compressionLevel: 1 })
        .toBuffer(),
    ],
  ];
}

/**
 * The start of a gRPC Preprocess request (one uncompressed message) declaring an image of
 * `declared` bytes (< 2^28) that has not been sent yet: the 5-byte message prefix, then the
 * image field's tag and its length as a 4-byte varint. What follows it should be the image's
 * bytes; an oversized-message drill sends as many as the server takes before it answers.
 */
export function declaredImageFrameHead(declared: number): Buffer {
  const field = Buffer.from([
    0x0a,
    0x80 | (declared & 0x7f),
    0x80 | ((declared >> 7) & 0x7f),
    0x80 | ((declared >> 14) & 0x7f),
    (declared >> 21) & 0x7f,
  ]);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(field.length + declared, 1);
  return Buffer.concat([prefix, field]);
}
