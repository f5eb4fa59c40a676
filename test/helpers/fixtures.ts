// Reads the golden fixtures made by the reference implementation (see test/fixtures/README.md).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './service-process.js';

export const fixturesDir = join(repoRoot, 'test', 'fixtures');

export interface SubImageExpectation {
  height: number;
  width: number;
  /** sha256 of the uint8 CHW pixels. */
  sha256: string;
  /** Sum of the uint8 pixels. */
  sum: number;
}

/**
 * Formats whose pixels can only match approximately: AVIF is decoded by libheif in libvips
 * but by libavif in Pillow, and their YUV -> RGB chroma upsampling differs (up to ±80 at
 * colour edges). Sizes and order are still exact; sums agree within 0.5%.
 */
export const APPROXIMATE_FORMATS = new Set(['avif']);

export interface PreprocessExpectation {
  /** File name under test/fixtures/images/. */
  file: string;
  split: boolean;
  source: { format: string; height: number; width: number };
  subImages: SubImageExpectation[];
  pixelValuesShape: number[];
  pixelValuesSha256: string;
  pixelAttentionMaskSha256: string;
}

interface RawSplit {
  sub_images: Array<{ height: number; width: number; sha256: string; sum: number }>;
  pixel_values_shape: number[];
  pixel_values_sha256: string;
  pixel_attention_mask_sha256: string;
}

interface RawImage {
  file: string;
  /** Present when the reference misbehaves on this image (see test/fixtures/README.md). */
  notes?: string[];
  source: { format: string; height: number; width: number };
  split_off?: RawSplit;
  split_on?: RawSplit;
}

/**
 * One expectation per corpus image and split setting. Images on which the reference itself
 * misbehaves (`notes`: heights of 1 or 3 pixels are mistaken for channels-first arrays by
 * transformers) are left out: Loupe processes them as the images they are.
 */
export function loadPreprocessExpectations(): PreprocessExpectation[] {
  const raw = JSON.parse(
    readFileSync(join(fixturesDir, 'preprocess', 'expected.json'), 'utf8'),
  ) as { images: RawImage[] };
  return raw.images
    .filter((image) => !image.notes?.length)
    .flatMap((image) =>
      ([false, true] as const).flatMap((split) => {
        const r = split ? image.split_on : image.split_off;
        if (!r?.sub_images) return [];
        return [
          {
            file: image.file.replace(/^images\//, ''),
            split,
            source: image.source,
            subImages: r.sub_images.map(({ height, width, sha256, sum }) => ({
              height,
              width,
              sha256,
              sum,
            })),
            pixelValuesShape: r.pixel_values_shape,
            pixelValuesSha256: r.pixel_values_sha256,
            pixelAttentionMaskSha256: r.pixel_attention_mask_sha256,
          },
        ];
      }),
    );
}

export function fixtureImage(name: string): Buffer {
  return readFileSync(join(fixturesDir, 'images', name));
}

/**
 * The cases of a table of tests made from fixture files (it.each, describe.each), checked
 * when the file is collected: a table with no cases runs no test and passes, so a fixture set
 * that came back empty or shrunk must fail instead. Throws unless there are exactly
 * `expected`; a fixture set that grows on purpose changes `expected` with it.
 */
export function fixtureCases<T>(what: string, cases: readonly T[], expected: number): T[] {
  if (cases.length !== expected)
    throw new Error(
      `${what}: ${cases.length} fixture cases, expected ${expected} (were the fixtures ` +
        `regenerated? update the expected count with them)`,
    );
  return [...cases];
}
