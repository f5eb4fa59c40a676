// Testing only (LOUPE_DECODER_TEST_FAULT_POSITION): a runner whose steps fail once they would
// write KV at or past a position, as a model run fails for real (ONNX Runtime refusing a
// position past the rotary table did, before capacity.ts refused such a context at start).
// worker-death.test.ts drives the engine's step-failure path with it.
import type { ModelRunner, RunnerStep } from './model-runner.js';

export function failingPast(runner: ModelRunner, position: number): ModelRunner {
  const reaches = (step: RunnerStep) =>
    step.prefill.some((c) => c.start + c.tokens.length > position) ||
    step.decode.some((r) => r.position >= position);
  return {
    vocab: runner.vocab,
    hidden: runner.hidden,
    imageTokenId: runner.imageTokenId,
    kv: runner.kv,
    run: (step) =>
      reaches(step)
        ? Promise.reject(new Error(`injected fault: KV position ${position} or later`))
        : runner.run(step),
    release: () => runner.release(),
  };
}
