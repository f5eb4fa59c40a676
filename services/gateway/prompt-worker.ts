// A prompt-pool thread (piscina): loads the checkpoint's tokenizer and chat template once,
// then turns long prompts into token ids off the gateway's event loop.
import { setPriority } from 'node:os';
import { workerData } from 'node:worker_threads';
// Only the text side of the model: no ONNX Runtime or sharp to load in these threads.
import { loadChatTemplate, loadTokenizer } from '../model/text-processor/index.js';
import { type PromptInput, promptIds } from './prompt.js';

// A long prompt is one client's cost: this thread runs at the lowest CPU priority (nice 19), so
// on a busy machine the event loop and the stages serving everyone else come first. On Linux
// the nice value is per thread, and pid 0 names the calling thread; elsewhere it may apply to
// the whole process or fail, so it is only tried there. (On a machine busy for long, a long
// prompt waits its turn: that is the point; the request's deadline still bounds it.)
if (process.platform === 'linux') {
  try {
    setPriority(0, 19);
  } catch {
    // Without the right to change it, the thread runs at the default priority.
  }
}

const { modelDir } = workerData as { modelDir: string };
const model = { tokenizer: loadTokenizer(modelDir), template: loadChatTemplate(modelDir) };

export default function run(input: PromptInput): Int32Array {
  return Int32Array.from(promptIds(model, input));
}
