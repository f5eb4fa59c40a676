// The vision session's own thread. ONNX Runtime blocks the thread that calls it for the whole
// run, so the session lives here and the gRPC thread only posts batches and reads results.
//
// Protocol (see runner.ts; the start and the ids are runtime/worker-channel.ts's): the parent
// sends { setup } once via workerData; this thread answers { kind: 'ready', info } or
// { kind: 'failed', message }, then for every { kind: 'run', id, subImages, dtypes } (the
// sub-images' pixels moved here rather than copied) answers { kind: 'done', id, blocks,
// computeMs } (one [tokens, hidden] block per sub-image, in its own dtype, each in a buffer of
// its own that is moved rather than copied) or { kind: 'error', id, message }.
// { kind: 'stop' } (STOP_WORKER) ends the thread; it is handled between runs, as every message
// is (a run blocks the thread).
import { parentPort, workerData } from 'node:worker_threads';
import {
  buildVisionGraph,
  createSession,
  encodeImages,
  float32sToFloat16,
  openCheckpoint,
  type ExecutionProvider,
  type SubImage,
} from '../model/index.js';
import type { StopWorker } from '../runtime/index.js';
import type { StartMessage } from '../runtime/worker-channel.js';
import { runMemoryModel, type RunMemoryModel } from './run-memory.js';

export interface RunnerSetup {
  modelDir: string;
  executionProvider: ExecutionProvider;
  intraOpThreads: number;
  /** Where a checkpoint with quantized vision linears has its weights packed. */
  weightCacheDir?: string;
}

export interface RunnerInfo {
  hiddenSize: number;
  tokensPerSubImage: number;
  patchSize: number;
  /** Largest side the position embedding covers: patches per side × patch size. */
  maxSide: number;
  /** The vision weights' dtype: `float32` or `float16`. */
  weightFormat: string;
  /** Bytes of the vision tower's and connector's weights. */
  weightBytes: number;
  /** The sizes a run's memory estimate needs (run-memory.ts). */
  memory: RunMemoryModel;
}

export type EmbeddingDtype = 'float16' | 'float32';

export interface RunRequest {
  kind: 'run';
  id: number;
  subImages: SubImage[];
  /** The dtype each sub-image's block is wanted in (a batch mixes requests). */
  dtypes: EmbeddingDtype[];
}

export type RunnerMessage =
  | StartMessage<RunnerInfo>
  | { kind: 'done'; id: number; blocks: Uint8Array[]; computeMs: number }
  | { kind: 'error'; id: number; message: string };

async function main(): Promise<void> {
  const port = parentPort!;
  const setup = workerData as RunnerSetup;
  let session;
  let geometry;
  try {
    const checkpoint = openCheckpoint(setup.modelDir);
    const graph = buildVisionGraph(
      checkpoint,
      setup.weightCacheDir === undefined ? {} : { weightCacheDir: setup.weightCacheDir },
    );
    session = await createSession(graph, {
      executionProvider: setup.executionProvider,
      intraOpThreads: setup.intraOpThreads,
    });
    geometry = checkpoint.config.vision;
    const info: RunnerInfo = {
      hiddenSize: checkpoint.config.text.hiddenSize,
      tokensPerSubImage: checkpoint.config.perceiver.nLatents,
      patchSize: geometry.patchSize,
      maxSide: geometry.patchSize * geometry.numPatchesPerSide,
      weightFormat: graph.weightFormat ?? 'float32',
      weightBytes: graph.weightBytes ?? 0,
      memory: runMemoryModel(checkpoint.config),
    };
    port.postMessage({ kind: 'ready', info } satisfies RunnerMessage);
  } catch (error) {
    port.postMessage({
      kind: 'failed',
      message: error instanceof Error ? error.message : String(error),
    } satisfies RunnerMessage);
    return;
  }
  const vision = session;
  const patches = geometry;
  port.on('message', (request: RunRequest | StopWorker) => {
    if (request.kind === 'stop') process.exit(0);
    void (async () => {
      const started = performance.now();
      try {
        const { data, dims } = await encodeImages(vision, request.subImages, patches);
        const block = dims[1] * dims[2];
        // Fresh buffers, one per block (not views of `data`): each moves to the parent whole.
        const blocks = request.dtypes.map((dtype, i) => {
          const rows = data.subarray(i * block, (i + 1) * block);
          const out = dtype === 'float16' ? float32sToFloat16(rows) : rows.slice();
          return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
        });
        const message: RunnerMessage = {
          kind: 'done',
          id: request.id,
          blocks,
          computeMs: performance.now() - started,
        };
        port.postMessage(
          message,
          blocks.map((b) => b.buffer as ArrayBuffer),
        );
      } catch (error) {
        port.postMessage({
          kind: 'error',
          id: request.id,
          message: error instanceof Error ? error.message : String(error),
        } satisfies RunnerMessage);
      }
    })();
  });
}

void main();
