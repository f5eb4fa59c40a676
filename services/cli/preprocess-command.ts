// `loupe preprocess`: the preprocessor's work in-process, written as the model's inputs.
import { readFileSync, statSync } from 'node:fs';
import {
  ImageDecodeError,
  loadImageProcessorConfig,
  preprocessImage,
  toPixelValues,
  writeSafetensors,
} from '../model/index.js';
import { decodeLimits, loadPreprocessorConfig } from '../preprocessor/index.js';
import { parseCommandArgs, parseSplit, required } from './args.js';
import { CliError } from './cli-error.js';

export async function runPreprocess(args: string[]): Promise<number> {
  const { values } = parseCommandArgs(args, {
    model: { type: 'string' },
    image: { type: 'string' },
    split: { type: 'string' },
    out: { type: 'string' },
  });
  const modelDir = required(values.model, '--model');
  const imagePath = required(values.image, '--image');
  const out = required(values.out, '--out');
  const split = parseSplit(values.split);

  let config;
  try {
    config = loadImageProcessorConfig(modelDir);
  } catch (error) {
    throw new CliError((error as Error).message);
  }
  // The same limits as the service, from the same variables.
  const service = loadPreprocessorConfig();
  const limits = decodeLimits(service);
  let size;
  try {
    size = statSync(imagePath).size;
  } catch (error) {
    throw new CliError(`cannot read --image ${imagePath}: ${(error as Error).message}`);
  }
  if (size > limits.maxBytes) {
    throw new CliError(
      `${imagePath} is ${size} bytes, over the limit of ${limits.maxBytes} (LOUPE_PREPROCESSOR_MAX_IMAGE_BYTES)`,
    );
  }
  let result;
  try {
    result = await preprocessImage(readFileSync(imagePath), { config, split, limits });
  } catch (error) {
    if (error instanceof ImageDecodeError) throw new CliError(`${imagePath}: ${error.message}`);
    throw error;
  }
  const { pixelValues, pixelAttentionMask, height, width } = toPixelValues(
    result.subImages,
    config,
  );
  const n = result.subImages.length;
  writeSafetensors(out, {
    pixel_values: { dtype: 'F32', shape: [n, 3, height, width], data: pixelValues },
    pixel_attention_mask: { dtype: 'U8', shape: [n, height, width], data: pixelAttentionMask },
  });
  const summary = {
    split: result.split,
    source: result.source,
    sub_images: result.subImages.map(({ height, width }) => ({ height, width })),
    image_tokens: result.imageTokens,
    pixel_values_shape: [n, 3, height, width],
    out,
  };
  process.stdout.write(JSON.stringify(summary) + '\n');
  return 0;
}
