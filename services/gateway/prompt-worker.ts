// A prompt-pool thread (piscina): loads the checkpoint's tokenizer and chat template once,
// then turns long prompts into token ids off the gateway's event loop.
import { workerData } from 'node:worker_threads';
// Only the text side of the model: no ONNX Runtime or sharp to load in these threads.
import { loadChatTemplate, loadTokenizer } from '../model/text/index.js';
import { type PromptInput, promptIds } from './prompt.js';

const { modelDir } = workerData as { modelDir: string };
const model = { tokenizer: loadTokenizer(modelDir), template: loadChatTemplate(modelDir) };

export default function run(input: PromptInput): Int32Array {
  return Int32Array.from(promptIds(model, input));
}
