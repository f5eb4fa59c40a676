// The preprocessor's configuration: every variable, its default and its bounds, in one place.
import { z } from 'zod';
import {
  commonEnvSchema,
  commonLayout,
  cpuBoundThreads,
  defaultMemoryBudget,
  intVar,
  loadConfig,
  optionalStringVar,
  type ConfigOf,
  portVar,
  stringVar,
  type Env,
} from '../runtime/index.js';

export const preprocessorEnvSchema = z.object({
  ...commonEnvSchema,
  /** Checkpoint directory; only preprocessor_config.json / processor_config.json are read. Unset: idefics2-8b defaults. */
  LOUPE_MODEL_DIR: optionalStringVar(),
  /** Address the gRPC and metrics servers bind to. */
  LOUPE_PREPROCESSOR_HOST: stringVar('127.0.0.1'),
  LOUPE_PREPROCESSOR_PORT: portVar(50051),
  LOUPE_PREPROCESSOR_METRICS_PORT: portVar(9101),
  /**
   * Worker threads that decode and resize; default one per core this container may use (its
   * cgroup CPU limit rounded up, else the cores it can run on).
   */
  LOUPE_PREPROCESSOR_WORKERS: intVar(cpuBoundThreads(), { min: 1, max: 256 }),
  /**
   * Bytes the images being received, waiting and decoded may hold at once (decode-cost.ts
   * prices each from its header, before any pixel is decoded); what does not fit waits, or is
   * refused with RESOURCE_EXHAUSTED. 0: half the container's memory limit (cgroup), else a
   * quarter of the machine's memory. The process's fixed part (runtime, worker threads) is
   * outside it.
   */
  LOUPE_PREPROCESSOR_MEMORY_BUDGET_BYTES: intVar(0, { min: 0, max: 2 ** 50 }),
  /** Requests waiting for a worker beyond those running; over it: RESOURCE_EXHAUSTED. */
  LOUPE_PREPROCESSOR_MAX_QUEUE: intVar(64, { min: 0, max: 100_000 }),
  /** Largest encoded image accepted, bytes. */
  LOUPE_PREPROCESSOR_MAX_IMAGE_BYTES: intVar(20 * 1024 * 1024, { min: 1, max: 1024 * 1024 * 1024 }),
  /** Largest decoded image accepted, width × height, checked from the header before decoding. */
  LOUPE_PREPROCESSOR_MAX_IMAGE_PIXELS: intVar(50_000_000, { min: 1, max: 1_000_000_000 }),
  /** Files declaring more frames/pages than this are refused (only the first is ever decoded). */
  LOUPE_PREPROCESSOR_MAX_FRAMES: intVar(1000, { min: 1, max: 100_000 }),
  /** Decode time limit per image, seconds (libvips timeout). */
  LOUPE_PREPROCESSOR_DECODE_TIMEOUT_S: intVar(30, { min: 1, max: 3600 }),
  /** Deadline applied to calls that carry none, ms. */
  LOUPE_PREPROCESSOR_DEFAULT_DEADLINE_MS: intVar(60_000, { min: 1, max: 3_600_000 }),
});

/** The configuration object: each setting, and the variable it is read from. */
export const preprocessorLayout = {
  ...commonLayout,
  modelDir: 'LOUPE_MODEL_DIR',
  host: 'LOUPE_PREPROCESSOR_HOST',
  port: 'LOUPE_PREPROCESSOR_PORT',
  metricsPort: 'LOUPE_PREPROCESSOR_METRICS_PORT',
  workers: 'LOUPE_PREPROCESSOR_WORKERS',
  memoryBudgetBytes: 'LOUPE_PREPROCESSOR_MEMORY_BUDGET_BYTES',
  maxQueue: 'LOUPE_PREPROCESSOR_MAX_QUEUE',
  maxImageBytes: 'LOUPE_PREPROCESSOR_MAX_IMAGE_BYTES',
  maxImagePixels: 'LOUPE_PREPROCESSOR_MAX_IMAGE_PIXELS',
  maxFrames: 'LOUPE_PREPROCESSOR_MAX_FRAMES',
  decodeTimeoutSeconds: 'LOUPE_PREPROCESSOR_DECODE_TIMEOUT_S',
  defaultDeadlineMs: 'LOUPE_PREPROCESSOR_DEFAULT_DEADLINE_MS',
} as const;

export type PreprocessorConfig = ConfigOf<
  z.infer<typeof preprocessorEnvSchema>,
  typeof preprocessorLayout
>;

export const loadPreprocessorConfig = (env: Env = process.env): PreprocessorConfig =>
  loadConfig(preprocessorEnvSchema, preprocessorLayout, env);

/** The memory budget in bytes: the variable, or its default from the container's limit. */
export const memoryBudgetBytes = (config: PreprocessorConfig): number =>
  config.memoryBudgetBytes || defaultMemoryBudget(0.5);

/** The image limits these variables set, as the decoder takes them. */
export const decodeLimits = (config: PreprocessorConfig) => ({
  maxBytes: config.maxImageBytes,
  maxPixels: config.maxImagePixels,
  maxFrames: config.maxFrames,
  timeoutSeconds: config.decodeTimeoutSeconds,
});
