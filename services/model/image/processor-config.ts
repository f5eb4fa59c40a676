import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The image processor settings of a checkpoint (`preprocessor_config.json` plus
 * `image_seq_len`), in camelCase. Resampling is always PIL BILINEAR: other filters are
 * refused when the config is loaded.
 */
export interface ImageProcessorConfig {
  /** Split each image into 4 crops plus the original (docs/model.md §7 step 5). */
  doImageSplitting: boolean;
  /** Convert to RGB (always effectively true: the decoder yields RGB). */
  doConvertRgb: boolean;
  doResize: boolean;
  doRescale: boolean;
  doNormalize: boolean;
  doPad: boolean;
  /** Each resized side is at least this many pixels. */
  shortestEdge: number;
  /** The longer side is brought down to this many pixels. */
  longestEdge: number;
  /** Multiplier from uint8 to [0, 1], 1/255. */
  rescaleFactor: number;
  imageMean: readonly [number, number, number];
  imageStd: readonly [number, number, number];
  /** `<image>` tokens per sub-image (the perceiver's latents), 64 for idefics2-8b. */
  imageSeqLen: number;
}

/** idefics2-8b (docs/model.md §1.7): splitting on, 378..980 px, mean = std = 0.5. */
export const DEFAULT_IMAGE_PROCESSOR_CONFIG: Readonly<ImageProcessorConfig> = Object.freeze({
  doImageSplitting: true,
  doConvertRgb: true,
  doResize: true,
  doRescale: true,
  doNormalize: true,
  doPad: true,
  shortestEdge: 378,
  longestEdge: 980,
  rescaleFactor: 1 / 255,
  imageMean: Object.freeze([0.5, 0.5, 0.5] as const),
  imageStd: Object.freeze([0.5, 0.5, 0.5] as const),
  imageSeqLen: 64,
});

/** PIL's `Image.BILINEAR`, the only resampling filter implemented. */
const PIL_BILINEAR = 2;
const DEFAULT_IMAGE_SEQ_LEN = 64;

type Json = Record<string, unknown>;

function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  return `got ${JSON.stringify(value)}`;
}

/** Reads a JSON object; `undefined` when the file does not exist and `optional`. */
function readJsonObject(path: string, optional: boolean): Json | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (optional && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Error(`${path} must hold a JSON object, got ${JSON.stringify(parsed)}`);
  }
  return parsed as Json;
}

/** Field readers that name the file, the field and the offending value. */
class FieldReader {
  constructor(
    private readonly path: string,
    private readonly json: Json,
  ) {}

  private fail(field: string, expected: string, value: unknown): never {
    throw new Error(`${this.path}: \`${field}\` must be ${expected}, ${describe(value)}`);
  }

  boolean(field: string): boolean {
    const value = this.json[field];
    if (typeof value !== 'boolean') this.fail(field, 'a boolean', value);
    return value;
  }

  positiveNumber(field: string): number {
    const value = this.json[field];
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      this.fail(field, 'a positive number', value);
    }
    return value;
  }

  /** A number or a list of 3 numbers (per RGB channel), as transformers accepts. */
  triple(field: string, { nonZero }: { nonZero: boolean }): readonly [number, number, number] {
    const value = this.json[field];
    const ok = (x: unknown): x is number =>
      typeof x === 'number' && Number.isFinite(x) && (!nonZero || x !== 0);
    const expected = `a number or a list of 3 ${nonZero ? 'non-zero ' : ''}numbers`;
    if (ok(value)) return [value, value, value];
    if (!Array.isArray(value) || value.length !== 3 || !value.every(ok)) {
      this.fail(field, expected, value);
    }
    return [value[0], value[1], value[2]] as [number, number, number];
  }

  /** A positive integer inside an object field, e.g. `size.shortest_edge`. */
  nestedPositiveInteger(field: string, key: string): number {
    const parent = this.json[field];
    if (typeof parent !== 'object' || parent === null || Array.isArray(parent)) {
      this.fail(field, `an object with \`${key}\``, parent);
    }
    const value = (parent as Json)[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
      this.fail(`${field}.${key}`, 'a positive integer', value);
    }
    return value;
  }

  optionalPositiveInteger(field: string): number | undefined {
    const value = this.json[field];
    if (value === undefined) return undefined;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
      this.fail(field, 'a positive integer', value);
    }
    return value;
  }
}

/**
 * Parses the contents of `preprocessor_config.json`; `path` only names the file in errors.
 * Every setting the pipeline uses must be present (transformers writes them all when it
 * saves a processor), so a truncated or foreign file is refused rather than defaulted.
 */
export function parsePreprocessorConfig(
  json: Json,
  path: string,
  imageSeqLen: number,
): ImageProcessorConfig {
  const fields = new FieldReader(path, json);
  const resample = json['resample'];
  if (resample !== undefined && resample !== PIL_BILINEAR) {
    throw new Error(
      `${path}: \`resample\` must be ${PIL_BILINEAR} (PIL BILINEAR), the only filter supported, ${describe(resample)}`,
    );
  }
  const size = json['size'];
  if (
    typeof size === 'object' &&
    size !== null &&
    !('shortest_edge' in size) &&
    ('height' in size || 'width' in size)
  ) {
    throw new Error(
      `${path}: \`size\` must have \`shortest_edge\` and \`longest_edge\` (a fixed height/width is not supported), ${describe(size)}`,
    );
  }
  return {
    doImageSplitting: fields.boolean('do_image_splitting'),
    doConvertRgb: fields.boolean('do_convert_rgb'),
    doResize: fields.boolean('do_resize'),
    doRescale: fields.boolean('do_rescale'),
    doNormalize: fields.boolean('do_normalize'),
    doPad: fields.boolean('do_pad'),
    shortestEdge: fields.nestedPositiveInteger('size', 'shortest_edge'),
    longestEdge: fields.nestedPositiveInteger('size', 'longest_edge'),
    rescaleFactor: fields.positiveNumber('rescale_factor'),
    imageMean: fields.triple('image_mean', { nonZero: false }),
    imageStd: fields.triple('image_std', { nonZero: true }),
    imageSeqLen,
  };
}

/**
 * `<image>` tokens per sub-image: `processor_config.json` `image_seq_len`, else `config.json`
 * `perceiver_config.resampler_n_latents`, else 64.
 */
function readImageSeqLen(modelDir: string): number {
  const processorPath = join(modelDir, 'processor_config.json');
  const processor = readJsonObject(processorPath, true);
  const fromProcessor =
    processor && new FieldReader(processorPath, processor).optionalPositiveInteger('image_seq_len');
  if (fromProcessor !== undefined) return fromProcessor;

  const configPath = join(modelDir, 'config.json');
  const config = readJsonObject(configPath, true);
  const perceiver = config?.['perceiver_config'];
  if (perceiver !== undefined) {
    if (typeof perceiver !== 'object' || perceiver === null || Array.isArray(perceiver)) {
      throw new Error(
        `${configPath}: \`perceiver_config\` must be an object, ${describe(perceiver)}`,
      );
    }
    const latents = new FieldReader(configPath, perceiver as Json).optionalPositiveInteger(
      'resampler_n_latents',
    );
    if (latents !== undefined) return latents;
  }
  return DEFAULT_IMAGE_SEQ_LEN;
}

/**
 * Loads the image processor settings of a Hugging Face checkpoint directory:
 * `preprocessor_config.json` (required) and the image token count (see readImageSeqLen).
 * Errors name the file, the field and the value.
 */
export function loadImageProcessorConfig(modelDir: string): ImageProcessorConfig {
  const path = join(modelDir, 'preprocessor_config.json');
  const json = readJsonObject(path, false)!;
  return parsePreprocessorConfig(json, path, readImageSeqLen(modelDir));
}

/**
 * The checkpoint files that hold `config`, in the reference's names, as `save_pretrained`
 * writes them: `preprocessor_config.json` and `processor_config.json`. The inverse of
 * loadImageProcessorConfig.
 */
export function processorConfigFiles(config: ImageProcessorConfig): {
  'preprocessor_config.json': Record<string, unknown>;
  'processor_config.json': Record<string, unknown>;
} {
  return {
    'preprocessor_config.json': {
      do_convert_rgb: config.doConvertRgb,
      do_image_splitting: config.doImageSplitting,
      do_normalize: config.doNormalize,
      do_pad: config.doPad,
      do_rescale: config.doRescale,
      do_resize: config.doResize,
      image_mean: [...config.imageMean],
      image_processor_type: 'Idefics2ImageProcessor',
      image_std: [...config.imageStd],
      processor_class: 'Idefics2Processor',
      resample: PIL_BILINEAR,
      rescale_factor: config.rescaleFactor,
      size: { longest_edge: config.longestEdge, shortest_edge: config.shortestEdge },
    },
    'processor_config.json': {
      image_seq_len: config.imageSeqLen,
      processor_class: 'Idefics2Processor',
    },
  };
}
