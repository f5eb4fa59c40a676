// The engine's own thread: loads the text model, then runs the engine loop — one step at a
// time, handling queued commands (add, abort, stop) between steps — and reports every step's
// tokens to the gRPC thread. Protocol: see engine-client.ts.
import { parentPort, workerData } from 'node:worker_threads';
import {
  eosTokenIds,
  loadTextModel,
  openCheckpoint,
  type ExecutionProvider,
} from '../model/index.js';
import { Engine, type EngineOptions, type EngineRequest } from './engine.js';
import { QueueFullError } from './scheduler.js';
import type { EngineCommand, EngineMessage } from './engine-client.js';

export interface EngineSetup {
  modelDir: string;
  executionProvider: ExecutionProvider;
  intraOpThreads: number;
  /** For GPTQ checkpoints: int8 activations, and where the packed weights go. */
  quantized: { int8Activations: boolean; weightCacheDir?: string };
  engine: Omit<EngineOptions, 'eosTokenIds'>;
}

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
    });
    engine = new Engine(model, { ...setup.engine, eosTokenIds: eos });
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
  port.on('message', (command: EngineCommand) => {
    if (command.kind === 'add') {
      try {
        engine.add(command.request as EngineRequest);
        post({ kind: 'accepted', id: command.request.id, load: engine.load });
      } catch (error) {
        post({
          kind: 'rejected',
          id: command.request.id,
          reason: error instanceof QueueFullError ? 'queue_full' : 'invalid',
          message: error instanceof Error ? error.message : String(error),
        });
      }
    } else if (command.kind === 'abort') {
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
          step: { kind: report.kind, batch: report.batch, tokens: report.tokens, ms: report.ms },
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
