// The decode-cost estimate: what it counts for each kind of image, and that a real
// preprocessing run (in a child process of its own, measured by its peak RSS) stays under it.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';
import { fixtureImage } from '../../test/helpers/fixtures.js';
import { repoRoot } from '../../test/helpers/service-process.js';
import { DEFAULT_IMAGE_PROCESSOR_CONFIG } from '../model/index.js';
import { decodeCost, readImageHeader, type ImageHeader } from './decode-cost.js';

const config = DEFAULT_IMAGE_PROCESSOR_CONFIG;
const MP = 4000 * 3000;

describe('decodeCost', () => {
  const header = (extra: Partial<ImageHeader>): ImageHeader => ({
    isProgressive: false,
    format: 'jpeg',
    width: 4000,
    height: 3000,
    channels: 3,
    depth: 'uchar',
    space: 'srgb',
    ...extra,
  });

  it('counts an RGB JPEG as its raw output and the resize, plus its bytes', () => {
    const { bytes, parts } = decodeCost(header({}), 1000, config, true);
    expect(parts).toMatchObject({ input: 1000, frame: 0, raw: 3 * MP, rgb: 0, oriented: 0 });
    // The wasm copy (3 bytes a pixel), one pass's rows, and five sub-images twice.
    expect(parts.resize).toBeGreaterThan(3 * MP);
    expect(parts.resize).toBeLessThan(3 * MP + 50 * 2 ** 20);
    expect(bytes).toBe(Object.values(parts).reduce((a, b) => a + b));
  });

  it('adds the conversions CMYK, 16-bit grey and GIF need, and the copy a rotation makes', () => {
    const cmyk = decodeCost(header({ space: 'cmyk', channels: 4 }), 0, config).parts;
    expect([cmyk.raw, cmyk.rgb]).toEqual([4 * MP, 3 * MP]);
    const grey16 = decodeCost(
      header({ format: 'png', channels: 1, depth: 'ushort', space: 'grey16' }),
      0,
      config,
    ).parts;
    expect([grey16.frame, grey16.raw, grey16.rgb]).toEqual([0, 2 * MP, 3 * MP]);
    // libvips reads a palette GIF into an RGBA frame, and hands it on as RGBA.
    const gif = decodeCost(header({ format: 'gif', channels: 3 }), 0, config).parts;
    expect([gif.frame, gif.raw, gif.rgb]).toEqual([4 * MP, 4 * MP, 3 * MP]);
    const rotated = decodeCost(header({ orientation: 6 }), 0, config).parts;
    expect(rotated.oriented).toBe(3 * MP);
    expect(decodeCost(header({ orientation: 1 }), 0, config).parts.oriented).toBe(0);
  });

  it('counts the whole-frame buffer of the decoders that need one, by channels and depth', () => {
    const frame = (extra: Partial<ImageHeader>) => decodeCost(header(extra), 0, config).parts.frame;
    expect(frame({ format: 'webp', channels: 4 })).toBe(4 * MP);
    expect(frame({ format: 'heif' })).toBe(3 * MP);
    expect(frame({ format: 'png', isProgressive: true, channels: 4, depth: 'ushort' })).toBe(
      8 * MP,
    );
    expect(frame({ format: 'png' })).toBe(0);
    expect(frame({ format: 'jpeg', isProgressive: true })).toBe(0);
  });

  it('prices the first frame only, whatever the number of pages', () => {
    const one = decodeCost(header({ format: 'gif' }), 0, config).bytes;
    expect(
      decodeCost({ ...header({ format: 'gif' }), pages: 500 } as ImageHeader, 0, config).bytes,
    ).toBe(one);
  });

  it('reads the header of accepted formats only', async () => {
    const cmyk = await readImageHeader(fixtureImage('jpeg-cmyk-600x400.jpg'));
    expect(cmyk).toMatchObject({ format: 'jpeg', width: 600, height: 400, space: 'cmyk' });
    expect(await readImageHeader(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"/>'))).toBe(
      undefined,
    );
    expect(await readImageHeader(Buffer.from([0xff, 0xd8, 0xff, 0, 1, 2]))).toBe(undefined);
  });
});

describe('decodeCost against a real run', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-cost-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Peak RSS growth of preprocessing `file` once, in a fresh process (VmHWM, reset before). */
  async function measuredPeak(file: string): Promise<number> {
    const script = `
      import { readFileSync, writeFileSync } from 'node:fs';
      import sharp from 'sharp';
      const { preprocessImage, DEFAULT_IMAGE_PROCESSOR_CONFIG: config } =
        await import(${JSON.stringify(join(repoRoot, 'dist/services/model/index.js'))});
      sharp.concurrency(1);
      sharp.cache(false);
      const limits = { maxBytes: 2 ** 30, maxPixels: 1e9, maxFrames: 1000 };
      const kb = (name) =>
        Number(new RegExp(name + ':\\\\s+(\\\\d+)').exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
      const bytes = new Uint8Array(readFileSync(${JSON.stringify(file)}));
      // Warm up (the resize kernel, libvips), so only this image's memory is measured.
      await preprocessImage(new Uint8Array(readFileSync(${JSON.stringify(join(repoRoot, 'test/fixtures/images/jpeg-980x620.jpg'))})), { config, split: true, limits });
      writeFileSync('/proc/self/clear_refs', '5');
      const before = kb('VmRSS');
      await preprocessImage(bytes, { config, split: true, limits });
      process.stdout.write(String(kb('VmHWM') - before));
    `;
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--input-type=module', '-e', script],
      { cwd: repoRoot },
    );
    return Number(stdout);
  }

  /** A patterned image (quick to make and to encode, unlike noise), `channels` bands. */
  const pattern = (width: number, height: number, channels: number) => {
    const data = Buffer.allocUnsafe(width * height * channels);
    let i = 0;
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++)
        for (let c = 0; c < channels; c++)
          data[i++] = (x * (3 + c) + y * (5 + 2 * c) + ((x * y) >> 7)) & 255;
    return sharp(data, { raw: { width, height, channels: channels as 3 | 4 } });
  };
  const kinds: Array<[string, () => Promise<Buffer>]> = [
    ['jpeg', () => pattern(3000, 2000, 3).jpeg().toBuffer()],
    [
      'rotated jpeg',
      () => pattern(3000, 2000, 3).jpeg().withMetadata({ orientation: 6 }).toBuffer(),
    ],
    [
      'cmyk jpeg',
      () =>
        pattern(1500, 1000, 4).pipelineColourspace('cmyk').toColourspace('cmyk').jpeg().toBuffer(),
    ],
    ['gif', () => pattern(3000, 2000, 3).gif({ effort: 1, colours: 16, dither: 0 }).toBuffer()],
    [
      '16-bit grey png',
      () => pattern(3000, 2000, 3).toColourspace('grey16').png({ compressionLevel: 1 }).toBuffer(),
    ],
  ];

  it.each(kinds)(
    'a %s peaks under its estimate',
    async (_name, make) => {
      const bytes = await make();
      const file = join(dir, `image-${_name.replace(/\W+/g, '-')}`);
      writeFileSync(file, bytes);
      const header = (await readImageHeader(bytes))!;
      expect(header.format).toBe(
        _name.includes('gif') ? 'gif' : _name.includes('png') ? 'png' : 'jpeg',
      );
      const estimate = decodeCost(header, bytes.length, config, true).bytes;
      const peak = await measuredPeak(file);
      expect(peak).toBeGreaterThan(estimate / 4); // it did measure the decode
      expect(peak).toBeLessThanOrEqual(estimate);
    },
    30_000,
  );
});
