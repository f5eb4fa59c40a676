// The engine's own thread: loads the text model into a model runner, then runs the engine
// loop — one step at a time, handling queued commands (add, abort, stop) between steps — and
// reports every step's tokens to the gRPC thread. Protocol: protocol.ts.
import { parentPort, workerData } from 'node:worker_threads';
import { badWordsIds, eosTokenIds, loadTextModel, openCheckpoint } from '../model/index.js';
import { Engine } from './engine.js';
import { failingPast } from './fault-injection.js';
import type { ModelRunner } from './model-runner.js';
import { OrtModelRunner, runnerAttention } from './ort-runner.js';
import type { EngineCommand, EngineMessage, EngineSetup } from './protocol.js';
import { QueueFullError } from './scheduler.js';
import { GrammarCompilerCache, type Constraint } from './grammar/constraint.js';
import type { EngineRequest } from './protocol.js';

const port = parentPort!;
const post = (message: EngineMessage) => port.postMessage(message);

async function main(): Promise<void> {
  const setup = workerData as EngineSetup;
  let engine: Engine;
  try {
    const checkpoint = openCheckpoint(setup.modelDir);
    const eos = eosTokenIds(setup.modelDir);
    const model = await loadTextModel(checkpoint, {
      session: { executionProvider: setup.executionProvider, intraOpThreads: setup.intraOpThreads },
      quantized: setup.quantized,
      attention: runnerAttention(setup.executionProvider),
    });
    let runner: ModelRunner = new OrtModelRunner(model, {
      slots: setup.engine.maxRunning,
      context: setup.engine.maxContext,
      cacheBlocks: setup.engine.prefixCacheBlocks,
    });
    if (setup.faultAtPosition) runner = failingPast(runner, setup.faultAtPosition);
    engine = new Engine(runner, {
      maxWaiting: setup.engine.maxWaiting,
      maxPrefillTokens: setup.engine.maxPrefillTokens,
      maxStepMs: setup.engine.maxStepMs,
      eosTokenIds: eos,
      badWordsIds: badWordsIds(setup.modelDir),
    });
    post({
      kind: 'ready',
      info: {
        vocabSize: model.graph.vocab,
        hiddenSize: model.graph.hidden,
        imageTokenId: model.imageTokenId,
        eosTokenIds: eos,
        weightFormat: model.graph.weightFormat,
        weightBytes: model.graph.weightBytes,
        ...(model.graph.packed ? { packedWeights: model.graph.packed } : {}),
      },
    });
  } catch (error) {
    post({ kind: 'failed', message: error instanceof Error ? error.message : String(error) });
    return;
  }

  let wake: (() => void) | undefined;
  // Structured output: the tokenizer's grammar compiler, made with the first request that asks
  // for a format (docs/structured-output.md), and the requests whose format is compiling.
  let grammar: Promise<GrammarCompilerCache> | undefined;
  const compiling = new Map<string, { aborted: boolean }>();
  const admit = (request: EngineRequest, constraint?: Constraint) => {
    try {
      engine.add(request, constraint);
      post({ kind: 'accepted', id: request.id, load: engine.load });
    } catch (error) {
      constraint?.dispose();
      post({
        kind: 'rejected',
        id: request.id,
        reason: error instanceof QueueFullError ? 'queue_full' : 'invalid',
        message: error instanceof Error ? error.message : String(error),
      });
    }
    wake?.();
  };
  port.on('message', (command: EngineCommand) => {
    if (command.kind === 'add') {
      const { request } = command;
      const format = request.responseFormat;
      if (format === undefined) {
        admit(request);
      } else {
        const entry = { aborted: false };
        compiling.set(request.id, entry);
        grammar ??= GrammarCompilerCache.fromModelDir(setup.modelDir, {
          vocabSize: engine.vocabSize,
          stopTokenIds: engine.eosTokenIds,
        });
        grammar
          .then((cache) => cache.constraint(format))
          .then(
            (constraint) => {
              compiling.delete(request.id);
              if (entry.aborted) constraint.dispose();
              else admit(request, constraint);
            },
            (error: unknown) => {
              compiling.delete(request.id);
              post({
                kind: 'rejected',
                id: request.id,
                reason: 'invalid',
                message: `response_format: ${error instanceof Error ? error.message : String(error)}`,
              });
            },
          );
      }
    } else if (command.kind === 'abort') {
      const pending = compiling.get(command.id);
      if (pending) pending.aborted = true;
      engine.abort(command.id);
      post({ kind: 'load', load: engine.load });
    } else if (command.kind === 'stop') {
      // STOP_WORKER: between steps, so no model run is cut short.
      process.exit(0);
    }
    wake?.();
  });

  for (;;) {
    if (!engine.hasWork) {
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
      continue;
    }
    try {
      const report = await engine.step();
      if (report) {
        post({
          kind: 'step',
          step: {
            kind: report.kind,
            batch: report.batch,
            tokens: report.tokens,
            ms: report.ms,
            prefixQueries: report.prefixQueries,
            prefixHits: report.prefixHits,
          },
          events: report.events,
          load: engine.load,
        });
      }
    } catch (error) {
      // A failed run fails the sequences in flight, not the engine.
      const message = error instanceof Error ? error.message : String(error);
      post({ kind: 'step_failed', message, ids: engine.abortAll(), load: engine.load });
    }
    // Let add/abort commands in between steps.
    await new Promise((resolve) => setImmediate(resolve));
  }
}

void main();
