import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { decodeImage, type DecodeLimits, toImageDecodeError } from './decode.js';
import { ImageDecodeError, type ImageDecodeReason } from './decode-error.js';
import { sniffImageFormat } from './sniff-format.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const IMAGES = new URL('../../../test/fixtures/images/', import.meta.url);
const EDGE_CASES = new URL('testdata/', import.meta.url);
const LIMITS: DecodeLimits = { maxBytes: 20 << 20, maxPixels: 40_000_000, maxFrames: 10 };

const fixture = (name: string) => new Uint8Array(readFileSync(new URL(name, IMAGES)));

async function refusal(
  bytes: Uint8Array,
  limits: DecodeLimits = LIMITS,
): Promise<ImageDecodeError> {
  try {
    await decodeImage(bytes, limits);
  } catch (err) {
    expect(err).toBeInstanceOf(ImageDecodeError);
    return err as ImageDecodeError;
  }
  throw new Error('expected the image to be refused');
}

async function expectRefused(
  bytes: Uint8Array,
  reason: ImageDecodeReason,
  message: RegExp,
  limits?: DecodeLimits,
): Promise<void> {
  const err = await refusal(bytes, limits);
  expect(err.reason).toBe(reason);
  expect(err.message).toMatch(message);
}

function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), 8 + data.length);
  return out;
}

/** A valid PNG header declaring width x height RGB, with one tiny IDAT: a would-be bomb. */
function declaredPng(width: number, height: number): Uint8Array {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', new Uint8Array([0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01])),
    pngChunk('IEND', new Uint8Array(0)),
  ]);
}

describe('decodeImage refusals', () => {
  it('empty', async () => {
    await expectRefused(new Uint8Array(0), 'empty', /empty \(0 bytes\)/);
  });

  it('too_large, before looking inside', async () => {
    const bytes = fixture('jpeg-980x620.jpg');
    await expectRefused(
      bytes,
      'too_large',
      new RegExp(`image is ${bytes.length} bytes, over the limit of 1000`),
      { ...LIMITS, maxBytes: 1000 },
    );
  });

  it('refuses SVG, PDF, HEIC and unknown bytes by their magic bytes', async () => {
    const svg = Buffer.from(
      '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">' +
        '<image href="http://169.254.169.254/latest" width="10" height="10"/></svg>',
    );
    await expectRefused(
      svg,
      'unsupported_format',
      /the bytes look like SVG; accepted formats: JPEG, PNG, GIF, WebP, TIFF, AVIF/,
    );
    await expectRefused(Buffer.from('  <svg width="1" height="1"/>'), 'unsupported_format', /SVG/);
    await expectRefused(
      Buffer.from('%PDF-1.7\n1 0 obj\n<<>>\nendobj\n'),
      'unsupported_format',
      /PDF/,
    );
    const heic = Buffer.concat([
      Buffer.from([0, 0, 0, 0x18]),
      Buffer.from('ftypheic\0\0\0\0mif1heic'),
    ]);
    await expectRefused(heic, 'unsupported_format', /HEIF\/HEIC \(ftyp brands heic, mif1, heic\)/);
    await expectRefused(Buffer.from('BM\x36\0\0\0'), 'unsupported_format', /BMP/);
    await expectRefused(Buffer.from('hello world'), 'unsupported_format', /unrecognised/);
  });

  it('too_many_pixels from the header alone (decompression bomb)', async () => {
    await expectRefused(
      declaredPng(100_000, 100_000),
      'too_many_pixels',
      /image is 10000000000 pixels \(100000x100000\), over the limit of 40000000/,
    );
    await expectRefused(
      fixture('jpeg-2400x1600.jpg'),
      'too_many_pixels',
      /image is 3840000 pixels \(2400x1600\), over the limit of 1000000/,
      { ...LIMITS, maxPixels: 1_000_000 },
    );
  });

  it('too_many_frames', async () => {
    await expectRefused(
      fixture('gif-anim3-160x120.gif'),
      'too_many_frames',
      /image has 3 frames, over the limit of 2/,
      { ...LIMITS, maxFrames: 2 },
    );
    const { image } = await decodeImage(fixture('gif-anim3-160x120.gif'), {
      ...LIMITS,
      maxFrames: 3,
    });
    expect([image.width, image.height]).toEqual([160, 120]);
  });

  it('truncated JPEG, PNG, GIF, WebP and TIFF', async () => {
    for (const name of [
      'jpeg-980x620.jpg',
      'jpeg-progressive-800x600.jpg',
      'png-378x378.png',
      'png-interlaced-333x250.png',
      'gif-trns-200x150.gif',
      'webp-lossy-640x480.webp',
      'tiff-rgb-raw-200x150.tif',
    ]) {
      const bytes = fixture(name);
      for (const keep of [0.5, 0.97]) {
        const err = await refusal(bytes.subarray(0, Math.floor(bytes.length * keep)));
        expect(err.reason, `${name} cut to ${keep}: ${err.message}`).toBe('truncated');
        expect(err.message).toMatch(/image is truncated \(\d+ bytes\)/);
      }
    }
  });

  it('corrupt data', async () => {
    const png = fixture('png-378x378.png').slice();
    for (let i = 1000; i < 1200; i++) png[i]! ^= 0x5a;
    await expectRefused(png, 'corrupt', /^png image is corrupt: /);
    const garbage = new Uint8Array(4000).map((_, i) => (i * 7919) % 251);
    const jpeg = Buffer.concat([
      Buffer.from([0xff, 0xd8, 0xff, 0xe0]),
      garbage,
      Buffer.from([0xff, 0xd9]),
    ]);
    await expectRefused(jpeg, 'corrupt', /^jpeg image is corrupt: /);
  });

  it('maps every decoder failure to an ImageDecodeError', async () => {
    // Truncations and byte flips all over a few files: nothing escapes unmapped.
    for (const name of [
      'jpeg-422-640x427.jpg',
      'png-p-400x300.png',
      'webp-lossless-300x200.webp',
      'avif-640x480.avif',
    ]) {
      const bytes = fixture(name);
      for (let k = 1; k < 12; k++) {
        const cut = Math.floor((bytes.length * k) / 12);
        const flipped = bytes.slice();
        for (let i = cut; i < Math.min(bytes.length, cut + 64); i++) flipped[i]! ^= 0xa5;
        for (const variant of [bytes.subarray(0, cut), flipped]) {
          try {
            await decodeImage(variant, LIMITS);
          } catch (err) {
            expect(err, `${name} variant at ${cut}`).toBeInstanceOf(ImageDecodeError);
          }
        }
      }
    }
  });

  it('maps libvips messages for pixel limits and timeouts', () => {
    const bytes = fixture('png-tiny-2x2.png');
    const limits = { ...LIMITS, timeoutSeconds: 2 };
    const timeout = toImageDecodeError(new Error('timeout: 42% complete'), 'png', bytes, limits);
    expect(timeout.reason).toBe('timeout');
    expect(timeout.message).toMatch(/longer than the limit of 2 s/);
    const pixels = toImageDecodeError(
      new Error('Input image exceeds pixel limit'),
      'png',
      bytes,
      limits,
    );
    expect(pixels.reason).toBe('too_many_pixels');
    expect(pixels.message).toMatch(/over the limit of 40000000 pixels/);
  });
});

describe('decodeImage pixels', () => {
  it('drops alpha without compositing (RGBA PNG, like convert("RGB"))', async () => {
    const { image } = await decodeImage(fixture('png-rgba-400x300.png'), LIMITS);
    expect(image.data.length).toBe(400 * 300 * 3);
  });

  it('applies EXIF orientation (6 = rotate 90 degrees clockwise)', async () => {
    const upright = (await decodeImage(fixture('jpeg-exif1-1200x800.jpg'), LIMITS)).image;
    const rotated = (await decodeImage(fixture('jpeg-exif6-1200x800.jpg'), LIMITS)).image;
    expect([rotated.width, rotated.height]).toEqual([800, 1200]);
    // Output (y, x) = input (H - 1 - x, y): the top-right output pixel is the input's top-left.
    const px = (img: typeof upright, y: number, x: number) =>
      Array.from(img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3));
    expect(px(rotated, 0, 799)).toEqual(px(upright, 0, 0));
    expect(px(rotated, 1199, 0)).toEqual(px(upright, 799, 1199));
  });
});

describe('decodeImage on edge cases (testdata/make_testdata.py, PIL load_image hashes)', () => {
  const expected = JSON.parse(readFileSync(new URL('expected.json', EDGE_CASES), 'utf8')) as Record<
    string,
    { pil_mode: string; height: number; width: number; sha256: string }
  >;
  const cases = fixtureCases(
    'services/model/image/testdata/expected.json',
    Object.entries(expected),
    15,
  );
  it.each(cases)('%s', async (name, e) => {
    const bytes = new Uint8Array(readFileSync(new URL(name, EDGE_CASES)));
    const { image } = await decodeImage(bytes, LIMITS);
    expect([image.height, image.width]).toEqual([e.height, e.width]);
    expect(createHash('sha256').update(image.data).digest('hex')).toBe(e.sha256);
  });
});

describe('sniffImageFormat', () => {
  it('recognises the six accepted containers', () => {
    for (const [name, format] of [
      ['jpeg-980x620.jpg', 'jpeg'],
      ['png-378x378.png', 'png'],
      ['gif-trns-200x150.gif', 'gif'],
      ['webp-lossy-640x480.webp', 'webp'],
      ['tiff-rgb-lzw-240x180.tif', 'tiff'],
      ['avif-640x480.avif', 'avif'],
    ] as const) {
      expect(sniffImageFormat(fixture(name)).format).toBe(format);
    }
  });
});
