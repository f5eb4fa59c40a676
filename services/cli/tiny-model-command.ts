// `loupe tiny-model`: a random Idefics2 checkpoint for development, tests and benchmarks.
import { writeTinyModel, type TinySize } from '../model/index.js';
import { parseCommandArgs, required } from './args.js';
import { CliError } from './cli-error.js';

export async function runTinyModel(args: string[]): Promise<number> {
  const { values } = parseCommandArgs(args, {
    out: { type: 'string' },
    seed: { type: 'string' },
    size: { type: 'string' },
  });
  const out = required(values.out, '--out');
  const seed = Number(values.seed ?? '0');
  if (!Number.isInteger(seed) || seed < 0 || seed > 2 ** 32 - 1) {
    throw new CliError(`--seed must be an integer in [0, 4294967295], got "${values.seed}"`);
  }
  const size = values.size ?? 'tiny';
  if (size !== 'tiny' && size !== 'small')
    throw new CliError(`--size must be "tiny" or "small", got "${size}"`);
  try {
    const { config } = writeTinyModel({ out, seed, size: size as TinySize });
    process.stdout.write(
      JSON.stringify({ out, seed, size, vocab_size: config.text_config.vocab_size }) + '\n',
    );
  } catch (error) {
    throw new CliError((error as Error).message);
  }
  return 0;
}
