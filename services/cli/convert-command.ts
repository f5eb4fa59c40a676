// `loupe convert`: a checkpoint's weights rewritten in float32 or float16, and optionally its
// text decoder quantized to 4- or 8-bit GPTQ.
import {
  CheckpointError,
  convertCheckpoint,
  ConvertError,
  type QuantizeOptions,
  type TargetDtype,
} from '../model/index.js';
import { parseCommandArgs, required } from './args.js';
import { CliError } from './cli-error.js';
import { progressBar } from './progress-bar.js';

export async function runConvert(args: string[]): Promise<number> {
  const { values } = parseCommandArgs(args, {
    model: { type: 'string' },
    out: { type: 'string' },
    dtype: { type: 'string' },
    bits: { type: 'string' },
    'group-size': { type: 'string' },
    sym: { type: 'boolean' },
    'lm-head': { type: 'boolean' },
    'vision-bits': { type: 'string' },
    force: { type: 'boolean' },
  });
  const from = required(values.model, '--model');
  const to = required(values.out, '--out');
  if (values.dtype === undefined && values.bits === undefined)
    throw new CliError('give --dtype float32|float16, --bits 4|8, or both');
  const dtype = values.dtype ?? 'float32';
  if (dtype !== 'float32' && dtype !== 'float16')
    throw new CliError(`--dtype must be "float32" or "float16", got "${dtype}"`);
  let quantize: QuantizeOptions | undefined;
  if (values.bits !== undefined) {
    if (values.bits !== '4' && values.bits !== '8')
      throw new CliError(`--bits must be 4 or 8, got "${values.bits}"`);
    const group = values['group-size'] ?? '128';
    if (!['32', '64', '128'].includes(group))
      throw new CliError(`--group-size must be 32, 64 or 128, got "${group}"`);
    const vision = values['vision-bits'];
    if (vision !== undefined && vision !== '4' && vision !== '8')
      throw new CliError(`--vision-bits must be 4 or 8, got "${vision}"`);
    quantize = {
      bits: Number(values.bits) as 4 | 8,
      groupSize: Number(group),
      sym: values.sym ?? false,
      lmHead: values['lm-head'] ?? false,
      ...(vision === undefined ? {} : { visionBits: Number(vision) as 4 | 8 }),
    };
  } else if (
    values['group-size'] !== undefined ||
    values.sym ||
    values['lm-head'] ||
    values['vision-bits'] !== undefined
  ) {
    throw new CliError('--group-size, --sym, --lm-head and --vision-bits need --bits');
  }
  const started = performance.now();
  const bar = progressBar(process.stderr, 'convert');
  try {
    const summary = convertCheckpoint({
      from,
      to,
      dtype: dtype as TargetDtype,
      ...(quantize ? { quantize } : {}),
      force: values.force ?? false,
      onProgress: bar.update,
    });
    bar.done();
    process.stdout.write(
      JSON.stringify({
        out: to,
        dtype,
        ...(quantize ? { quantization: { method: 'gptq', ...quantize } } : {}),
        files: summary.files,
        tensors: summary.tensors,
        bytes: summary.bytes,
        sourceBytes: summary.sourceBytes,
        seconds: (performance.now() - started) / 1000,
        // The process's peak resident memory (kernel maxrss), for the one-tensor-at-a-time claim.
        peakRssBytes: process.resourceUsage().maxRSS * 1024,
      }) + '\n',
    );
    return 0;
  } catch (error) {
    bar.done();
    if (error instanceof CheckpointError || error instanceof ConvertError)
      throw new CliError(error.message);
    throw error;
  }
}
