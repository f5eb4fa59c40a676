// `loupe convert`: a checkpoint's weights rewritten in float32 or float16.
import {
  CheckpointError,
  convertCheckpoint,
  ConvertError,
  type TargetDtype,
} from '../model/index.js';
import { parseCommandArgs, required } from './args.js';
import { CliError } from './cli-error.js';

export async function runConvert(args: string[]): Promise<number> {
  const { values } = parseCommandArgs(args, {
    model: { type: 'string' },
    out: { type: 'string' },
    dtype: { type: 'string' },
  });
  const from = required(values.model, '--model');
  const to = required(values.out, '--out');
  const dtype = required(values.dtype, '--dtype');
  if (dtype !== 'float32' && dtype !== 'float16')
    throw new CliError(`--dtype must be "float32" or "float16", got "${dtype}"`);
  const started = performance.now();
  try {
    const summary = convertCheckpoint({ from, to, dtype: dtype as TargetDtype });
    process.stdout.write(
      JSON.stringify({
        out: to,
        dtype,
        files: summary.files,
        tensors: summary.tensors,
        bytes: summary.bytes,
        seconds: (performance.now() - started) / 1000,
      }) + '\n',
    );
    return 0;
  } catch (error) {
    if (error instanceof CheckpointError || error instanceof ConvertError)
      throw new CliError(error.message);
    throw error;
  }
}
