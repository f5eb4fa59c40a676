import { existsSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import type { OnnxModel } from './checkpoint-weights.js';
import type { ElementType } from './element-type.js';

/**
 * Where a session runs. `cpu` runs float32 graphs (float32 checkpoints). `cuda` needs the CUDA
 * provider libraries (see createSession) and is meant for float16 graphs: build them from a
 * float16 checkpoint (`loupe convert --dtype float16`; the graph builders follow
 * `checkpoint.dtype`).
 */
export type ExecutionProvider = 'cpu' | 'cuda';

export type GraphOptimizationLevel = 'disabled' | 'basic' | 'extended' | 'all';

export interface SessionOptions {
  /** Default `cpu`. With `cuda`, CPU stays as the fallback for ops CUDA lacks. */
  executionProvider?: ExecutionProvider;
  /** CUDA device ordinal; only with `cuda`. Default 0. */
  deviceId?: number;
  /** Threads for one operator (0 = ONNX Runtime's default, one per physical core). */
  intraOpThreads?: number;
  /** Default `all`; `disabled` helps when bisecting a numerical difference. */
  graphOptimizationLevel?: GraphOptimizationLevel;
  /** ONNX Runtime log level: 0 verbose … 4 fatal. Default 3 (errors). */
  logSeverityLevel?: 0 | 1 | 2 | 3 | 4;
}

/**
 * Opens a model: a file (external data `location`s resolve against the file's directory), or
 * an in-memory OnnxModel from the graph builders (they resolve against its
 * externalDataDir, given to ONNX Runtime as
 * `session.model_external_initializers_file_folder_path`).
 *
 * `cuda` selects the CUDA execution provider, which onnxruntime-node does not bundle: it is
 * fetched at install time (`npm i` with `--onnxruntime-node-install=cuda12`, or
 * `ONNXRUNTIME_NODE_INSTALL=cuda12`), which this repository's `.npmrc` skips so installs
 * stay offline. Without those libraries, creating a `cuda` session fails.
 *
 * Float type: use float16 checkpoints with `cuda`. ONNX Runtime's CUDA GroupQueryAttention
 * is registered for float16/bfloat16 (not verified on a GPU here), so a float32 text graph
 * would run it on the CPU fallback, copying every layer. A float16 graph also runs on `cpu`,
 * but the CPU provider casts most nodes (MatMul, Conv, attention, norms) to float32 and back
 * around themselves, so there it exercises the float16 rounding of weights, inputs and
 * outputs and a float16 GroupQueryAttention (and KV cache), not float16 matmul arithmetic.
 *
 * Blocking: onnxruntime-node 1.30 returns promises, but both `InferenceSession.create` and
 * `session.run` only defer to `setImmediate` and then call the native code synchronously,
 * so the JavaScript thread is blocked for the whole load or step (intra-op threads speed
 * the step up, they do not free the caller). Serve sessions from worker threads.
 */
export async function createSession(
  model: string | OnnxModel,
  {
    executionProvider = 'cpu',
    deviceId = 0,
    intraOpThreads = 0,
    graphOptimizationLevel = 'all',
    logSeverityLevel = 3,
  }: SessionOptions = {},
): Promise<ort.InferenceSession> {
  if (!Number.isSafeInteger(intraOpThreads) || intraOpThreads < 0) {
    throw new RangeError(`\`intraOpThreads\` must be an integer >= 0, got ${intraOpThreads}`);
  }
  const inMemory = typeof model !== 'string';
  if (!inMemory && !existsSync(model)) throw new Error(`ONNX model file not found: ${model}`);
  if (inMemory && !existsSync(model.externalDataDir)) {
    throw new Error(`${model.name}: weights directory ${model.externalDataDir} not found`);
  }
  const providers: ort.InferenceSession.ExecutionProviderConfig[] =
    executionProvider === 'cuda' ? [{ name: 'cuda', deviceId }, 'cpu'] : ['cpu'];
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders: providers,
    intraOpNumThreads: intraOpThreads,
    graphOptimizationLevel,
    logSeverityLevel,
  };
  try {
    if (!inMemory) return await ort.InferenceSession.create(model, options);
    return await ort.InferenceSession.create(model.bytes, {
      ...options,
      extra: { session: { model_external_initializers_file_folder_path: model.externalDataDir } },
    });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    const what = inMemory ? model.name : model;
    throw new Error(`cannot load ONNX model ${what}: ${message}`, { cause: err });
  }
}

/** Typed-array type onnxruntime-node takes for each element type. */
export interface TensorData {
  float32: Float32Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  float64: Float64Array;
  int64: BigInt64Array;
  int32: Int32Array;
  int16: Int16Array;
  int8: Int8Array;
  uint64: BigUint64Array;
  uint32: Uint32Array;
  uint16: Uint16Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}

/** An input tensor, checking that `dims` matches the element count. */
export function makeTensor<T extends ElementType>(
  type: T,
  data: TensorData[T],
  dims: readonly number[],
): ort.Tensor {
  const count = dims.reduce((n, d) => n * d, 1);
  if (data.length !== count) {
    throw new RangeError(
      `${type} tensor ${JSON.stringify(dims)} needs ${count} elements, got ${data.length}`,
    );
  }
  // ort.Tensor's overloads are keyed by type literal; the map above keeps them in step.
  return new ort.Tensor(type as 'float32', data as Float32Array, dims);
}

/** An output tensor of a run, checked to exist and to have the expected element type. */
export function readOutput<T extends ElementType>(
  outputs: ort.InferenceSession.OnnxValueMapType,
  name: string,
  type: T,
): { data: TensorData[T]; dims: readonly number[] } {
  const value = outputs[name];
  if (value === undefined) {
    throw new Error(
      `output \`${name}\` missing; the run returned ${Object.keys(outputs).join(', ')}`,
    );
  }
  if (value.type !== type)
    throw new TypeError(`output \`${name}\` is ${value.type}, expected ${type}`);
  return { data: value.data as TensorData[T], dims: value.dims };
}
