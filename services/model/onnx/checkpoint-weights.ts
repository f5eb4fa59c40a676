// Checkpoint tensors as ONNX external initializers, read in place from the safetensors files,
// and the in-memory model that names them.
//
// ONNX Runtime resolves external data `location`s against one directory and refuses any
// that, after resolving symlinks, lands outside it. A model loaded from bytes gets that
// directory from the session option `session.model_external_initializers_file_folder_path`,
// so nothing has to be written next to the weights: checkpoints on read-only volumes load,
// and so does a Hugging Face hub snapshot, whose files are symlinks into `../../blobs/`
// (the directory is then the deepest one that holds the real files, the repository folder).
import { realpathSync } from 'node:fs';
import { dirname, relative, sep } from 'node:path';
import type { Checkpoint } from '../checkpoint/index.js';
import type { GraphFloatType } from './element-type.js';
import { safetensorsDtypeOf } from './element-type.js';
import type { GraphBuilder } from './graph-builder.js';

/** An ONNX model held in memory; its external data locations are relative to externalDataDir. */
export interface OnnxModel {
  /** For messages: what the model is, e.g. `vision graph of /models/idefics2-8b`. */
  name: string;
  bytes: Uint8Array;
  externalDataDir: string;
  /** Bytes of weights its initializers read from external data (for logs and Info). */
  weightBytes?: number;
  /** What the weights are: `float32`, `float16`, `gptq-8bit-g128-sym`, ... */
  weightFormat?: string;
}

/** The deepest directory that holds every file of `files` once symlinks are resolved. */
export function externalDataDir(files: Iterable<string>): string {
  let common: string[] | undefined;
  for (const file of files) {
    const parts = dirname(realpathSync(file)).split(sep);
    if (common === undefined) common = parts;
    else {
      let n = 0;
      while (n < common.length && n < parts.length && common[n] === parts[n]) n++;
      common = common.slice(0, n);
    }
  }
  if (common === undefined) throw new Error('no weight files');
  return common.join(sep) || sep;
}

/**
 * Adds checkpoint tensors to a graph as external initializers, in the graph's float type
 * (the checkpoint's; mixed dtypes are refused with the way out).
 */
export class CheckpointWeights {
  readonly dir: string;
  readonly #locations = new Map<string, string>();
  #bytes = 0;

  constructor(
    private readonly checkpoint: Checkpoint,
    private readonly type: GraphFloatType,
    /** What reads the weights, for messages: `the vision graph`. */
    private readonly reader: string,
  ) {
    this.dir = externalDataDir(new Set([...checkpoint.tensors.values()].map((t) => t.file)));
  }

  /** Tensor `name` as an initializer of `g` (no copy); `dims` may reshape it (same count). */
  add(g: GraphBuilder, name: string, dims?: readonly number[]): string {
    const t = this.checkpoint.tensors.get(name);
    if (!t) throw new Error(`checkpoint ${this.checkpoint.dir} has no tensor ${name}`);
    if (t.dtype !== safetensorsDtypeOf(this.type)) {
      throw new Error(
        `${this.reader} runs the checkpoint's ${this.type} weights; ${name} in ${t.file} is ${t.dtype} (mixed dtypes: rewrite the checkpoint with \`loupe convert\`)`,
      );
    }
    this.#bytes += t.byteLength;
    let location = this.#locations.get(t.file);
    if (location === undefined) {
      location = relative(this.dir, realpathSync(t.file)).split(sep).join('/');
      this.#locations.set(t.file, location);
    }
    return g.externalInitializer(name, this.type, dims ?? t.shape, {
      location,
      offset: t.offset,
      length: t.byteLength,
    });
  }

  /** The finished graph as an in-memory model over these weights. */
  model(g: GraphBuilder, name: string): OnnxModel {
    return {
      name,
      bytes: g.toBytes(),
      externalDataDir: this.dir,
      weightBytes: this.#bytes,
      weightFormat: this.type,
    };
  }
}
