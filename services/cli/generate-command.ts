// `loupe generate`: greedy decoding in-process (no services), the reference for the stack.
import {
  eosTokenIds,
  expandImagePrompt,
  generateGreedy,
  ImagePromptError,
  loadTextModel,
  loadTokenizer,
  writeSafetensors,
} from '../model/index.js';
import { parseCommandArgs, parseSplit, required } from './args.js';
import { CliError } from './cli-error.js';
import { encodeSubImages, loadImages, openModel } from './model-inputs.js';

export async function runGenerate(args: string[]): Promise<number> {
  const { values } = parseCommandArgs(args, {
    model: { type: 'string' },
    prompt: { type: 'string' },
    image: { type: 'string', multiple: true },
    split: { type: 'string' },
    'max-new-tokens': { type: 'string' },
    json: { type: 'boolean' },
    'logits-out': { type: 'string' },
  });
  const dir = required(values.model, '--model');
  const prompt = required(values.prompt, '--prompt');
  const maxNewTokens = Number(required(values['max-new-tokens'], '--max-new-tokens'));
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1 || maxNewTokens > 100_000) {
    throw new CliError(
      `--max-new-tokens must be an integer in [1, 100000], got "${values['max-new-tokens']}"`,
    );
  }
  const { checkpoint, processor } = openModel(dir);
  const tokenizer = loadTokenizer(dir);
  const images = await loadImages(values.image ?? [], processor, parseSplit(values.split));

  let expanded: string;
  try {
    expanded = expandImagePrompt(prompt, {
      imageSeqLen: processor.imageSeqLen,
      splits: images.map((i) => i.split),
    });
  } catch (error) {
    if (error instanceof ImagePromptError)
      throw new CliError(`${error.message} (one <image> in --prompt per --image)`);
    throw error;
  }
  const ids = tokenizer.encode(expanded);
  const subImages = images.flatMap((i) => i.subImages);
  const imageRows =
    subImages.length > 0 ? (await encodeSubImages(checkpoint, subImages)).data : undefined;

  const model = await loadTextModel(checkpoint);
  try {
    const result = await generateGreedy(model, [{ ids, imageRows }], {
      maxNewTokens,
      eosTokenIds: eosTokenIds(dir, { tokenizer }),
    });
    const sequence = result.sequences[0]!;
    const text = tokenizer.decode(sequence.generatedIds, { skipSpecialTokens: true });
    if (values['logits-out']) {
      const logits = sequence.prefillLogits;
      writeSafetensors(values['logits-out'], {
        logits: { dtype: 'F32', shape: [logits.length], data: logits },
      });
    }
    process.stdout.write(
      values.json
        ? JSON.stringify({
            prompt_token_ids: sequence.promptIds,
            token_ids: sequence.generatedIds,
            text,
          }) + '\n'
        : text + '\n',
    );
  } finally {
    await model.release();
  }
  return 0;
}
