// The `loupe` command.
import { runChat } from './chat-command.js';
import { runConvert } from './convert-command.js';
import { runDownload } from './download-command.js';
import { runEncode } from './encode-command.js';
import { runGenerate } from './generate-command.js';
import { runPreprocess } from './preprocess-command.js';
import { runStart } from './start-command.js';
import { runTinyModel } from './tiny-model-command.js';
import { CliError } from './cli-error.js';

const USAGE = `usage: loupe <command> [options]

commands:
  start                          start the local stack (gateway, preprocessor, encoder, decoder),
                                 one process each; Ctrl-C stops it
  chat [--url URL] [--image FILE]... [--max-tokens N] [--temperature T] "question"
                                 ask the gateway (default http://127.0.0.1:8080, key from
                                 LOUPE_API_KEY) and stream the answer
  preprocess --model DIR --image FILE [--split on|off] --out FILE.safetensors
                                 run the image preprocessor in-process and write pixel_values
                                 and pixel_attention_mask; prints a JSON summary
  generate --model DIR --prompt TEXT [--image FILE]... [--split on|off] --max-new-tokens N
           [--json] [--logits-out FILE.safetensors]
                                 greedy decoding in-process; TEXT has one <image> per --image
  encode --model DIR --image FILE [--split on|off] --out FILE.safetensors
                                 image_hidden_states of one image, in-process
  convert --model DIR --out DIR [--dtype float32|float16] [--bits 4|8 [--group-size 32|64|128]
          [--sym] [--lm-head] [--vision-bits 8]] [--force]
                                 rewrite a checkpoint's weights in another dtype (e.g. bfloat16
                                 checkpoints for the CPU provider) and/or quantize its text
                                 decoder to GPTQ, one tensor at a time
  tiny-model --out DIR [--seed N] [--size tiny|small]
                                 write a complete Idefics2 checkpoint with seeded random weights
                                 and a real tokenizer (tiny: tests; small: benchmarks)
  download ORG/NAME[@REVISION] --out DIR [--endpoint URL]
                                 fetch a checkpoint from the Hub (HF_TOKEN, HF_ENDPOINT); resumable
  help                           this text
`;

const commands: Record<string, (args: string[]) => Promise<number>> = {
  start: runStart,
  chat: runChat,
  preprocess: runPreprocess,
  convert: runConvert,
  generate: runGenerate,
  encode: runEncode,
  'tiny-model': runTinyModel,
  download: runDownload,
  help: async () => {
    process.stdout.write(USAGE);
    return 0;
  },
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined || name === '--help' || name === '-h') {
    process.stdout.write(USAGE);
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`loupe: unknown command "${name}"\n\n${USAGE}`);
    return 2;
  }
  try {
    return await command(args);
  } catch (error) {
    if (error instanceof CliError) {
      process.stderr.write(`loupe ${name}: ${error.message}\n`);
      return error.exitCode;
    }
    throw error;
  }
}
