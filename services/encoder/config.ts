// The encoder's configuration: every variable, its default and its bounds, in one place.
import { z } from 'zod';
import {
  commonEnvSchema,
  commonLayout,
  defaultMemoryBudget,
  enumVar,
  intVar,
  loadConfig,
  optionalStringVar,
  type ConfigOf,
  portVar,
  stringVar,
  type Env,
} from '../runtime/index.js';

export const encoderEnvSchema = z.object({
  ...commonEnvSchema,
  /** Checkpoint directory (Hugging Face Idefics2 layout; float16 for cuda). Required. */
  LOUPE_MODEL_DIR: z.string({ error: 'LOUPE_MODEL_DIR must name the checkpoint directory' }).min(1),
  /** Reported by Info and part of every cache key; default the checkpoint directory's name. */
  LOUPE_MODEL_ID: optionalStringVar(),
  /** Address the gRPC and metrics servers bind to. */
  LOUPE_ENCODER_HOST: stringVar('127.0.0.1'),
  LOUPE_ENCODER_PORT: portVar(50052),
  LOUPE_ENCODER_METRICS_PORT: portVar(9102),
  /** ONNX Runtime execution provider: cpu, or cuda (float16 checkpoint, CUDA libraries). */
  LOUPE_ENCODER_EXECUTION_PROVIDER: enumVar(['cpu', 'cuda'], 'cpu'),
  /** Intra-op threads of the vision session; 0 = one per physical core. */
  LOUPE_ENCODER_THREADS: intVar(0, { min: 0, max: 1024 }),
  /** Most sub-images in one model run; 1 turns batching off. */
  LOUPE_ENCODER_MAX_BATCH: intVar(8, { min: 1, max: 256 }),
  /** Longest a sub-image waits for others before a partial batch runs, ms. */
  LOUPE_ENCODER_MAX_WAIT_MS: intVar(5, { min: 0, max: 10_000 }),
  /**
   * Bytes one model run (a batch) may add at its peak, estimated from the batch's shape before
   * it runs (run-memory.ts): a batch takes only the sub-images whose run fits, the rest wait
   * for the next. 0: 75% of the container's memory limit (cgroup; else 3/8 of the machine's
   * memory) less what the process holds once the model is loaded (resident memory) and
   * LOUPE_ENCODER_CACHE_BYTES; with cuda, where the activations are in GPU memory, no bound.
   * Must fit one sub-image of the model's largest size, or the encoder does not start.
   */
  LOUPE_ENCODER_MEMORY_BUDGET_BYTES: intVar(0, { min: 0, max: 2 ** 50 }),
  /**
   * Most padded pixels in one model run (sub-images × the batch's height × width), a bound on
   * top of the memory budget. 0: as many sub-images of the largest size as the memory budget
   * admits in one run, at most LOUPE_ENCODER_MAX_BATCH. At least one largest sub-image (the
   * model's maximum side, squared).
   */
  LOUPE_ENCODER_MAX_BATCH_PIXELS: intVar(0, { min: 0, max: 2 ** 40 }),
  /** Largest share of a batch's pixels that may be padding, percent (0: equal sizes only). */
  LOUPE_ENCODER_MAX_PADDING_PERCENT: intVar(10, { min: 0, max: 100 }),
  /** Sub-images waiting beyond the running batch; over it: RESOURCE_EXHAUSTED. */
  LOUPE_ENCODER_MAX_QUEUE: intVar(64, { min: 1, max: 100_000 }),
  /** Most sub-images in one request (Idefics2 splitting gives 5 per image). */
  LOUPE_ENCODER_MAX_SUB_IMAGES: intVar(16, { min: 1, max: 1024 }),
  /** Embedding cache size, bytes; 0 turns the cache off. */
  LOUPE_ENCODER_CACHE_BYTES: intVar(512 * 1024 * 1024, { min: 0, max: 2 ** 40 }),
  /**
   * Longest one model run (a batch) may take, ms; 0: no limit. A run still going after it
   * means the vision thread is stuck, and it is handled as a thread that died (crashed or
   * exited): waiting calls fail with UNAVAILABLE (`loupe-reason: worker_died`), health goes
   * NOT_SERVING, an error line says `worker_died`, and the process exits with code 70 for its
   * supervisor to restart it — once the run is over; a run not over within 5 s more gets the
   * process killed (SIGKILL, logged as `worker_stuck`). Set it well above the slowest batch
   * (LOUPE_ENCODER_MAX_BATCH sub-images of the largest size, on this hardware).
   */
  LOUPE_ENCODER_RUN_TIMEOUT_MS: intVar(0, { min: 0, max: 86_400_000 }),
  /** Deadline applied to calls that carry none, ms. */
  LOUPE_ENCODER_DEFAULT_DEADLINE_MS: intVar(60_000, { min: 1, max: 3_600_000 }),
  /**
   * Where a checkpoint whose vision linears are quantized (`loupe_vision`) has its weights
   * packed once and reused; default `.loupe-cache` in the checkpoint when writable, else the
   * system's temporary folder.
   */
  LOUPE_WEIGHT_CACHE_DIR: optionalStringVar(),
});

/** The configuration object: each setting, and the variable it is read from. */
export const encoderLayout = {
  ...commonLayout,
  modelDir: 'LOUPE_MODEL_DIR',
  modelId: 'LOUPE_MODEL_ID',
  host: 'LOUPE_ENCODER_HOST',
  port: 'LOUPE_ENCODER_PORT',
  metricsPort: 'LOUPE_ENCODER_METRICS_PORT',
  executionProvider: 'LOUPE_ENCODER_EXECUTION_PROVIDER',
  threads: 'LOUPE_ENCODER_THREADS',
  maxBatch: 'LOUPE_ENCODER_MAX_BATCH',
  maxWaitMs: 'LOUPE_ENCODER_MAX_WAIT_MS',
  memoryBudgetBytes: 'LOUPE_ENCODER_MEMORY_BUDGET_BYTES',
  maxBatchPixels: 'LOUPE_ENCODER_MAX_BATCH_PIXELS',
  maxPaddingPercent: 'LOUPE_ENCODER_MAX_PADDING_PERCENT',
  maxQueue: 'LOUPE_ENCODER_MAX_QUEUE',
  maxSubImages: 'LOUPE_ENCODER_MAX_SUB_IMAGES',
  cacheBytes: 'LOUPE_ENCODER_CACHE_BYTES',
  runTimeoutMs: 'LOUPE_ENCODER_RUN_TIMEOUT_MS',
  defaultDeadlineMs: 'LOUPE_ENCODER_DEFAULT_DEADLINE_MS',
  weightCacheDir: 'LOUPE_WEIGHT_CACHE_DIR',
} as const;

export type EncoderConfig = ConfigOf<z.infer<typeof encoderEnvSchema>, typeof encoderLayout>;

export const loadEncoderConfig = (env: Env = process.env): EncoderConfig =>
  loadConfig(encoderEnvSchema, encoderLayout, env);

/** The share of the container's memory limit the model, the cache and the runs may take. */
export const MEMORY_LIMIT_SHARE = 0.75;

export interface EncoderMemoryBudget {
  /** Bytes a run may add; Infinity when there is no bound (cuda, by default). */
  bytes: number;
  /** How it was arrived at, for messages and the start-up log. */
  source: string;
}

/**
 * The run memory budget: LOUPE_ENCODER_MEMORY_BUDGET_BYTES, or by default
 * MEMORY_LIMIT_SHARE of the container's memory limit (defaultMemoryBudget) less
 * `residentBytes`, what the process holds with the model loaded, and the embedding cache's
 * bytes. With cuda the activations live in GPU memory, which that limit does not cover: no
 * bound by default.
 */
export function encoderMemoryBudget(
  config: EncoderConfig,
  residentBytes: number,
  limitShare = defaultMemoryBudget(MEMORY_LIMIT_SHARE),
): EncoderMemoryBudget {
  if (config.memoryBudgetBytes > 0)
    return { bytes: config.memoryBudgetBytes, source: 'LOUPE_ENCODER_MEMORY_BUDGET_BYTES' };
  if (config.executionProvider === 'cuda')
    return { bytes: Infinity, source: 'none (cuda: the activations are in GPU memory)' };
  return {
    bytes: Math.max(0, limitShare - residentBytes - config.cacheBytes),
    source: `the default: ${MEMORY_LIMIT_SHARE * 100}% of the memory limit (${limitShare} bytes) less the process's resident memory with the model loaded (${residentBytes}) and LOUPE_ENCODER_CACHE_BYTES (${config.cacheBytes})`,
  };
}
