// The decoder's configuration: every variable, its default and its bounds, in one place.
import { z } from 'zod';
import {
  commonEnvSchema,
  commonLayout,
  enumVar,
  intVar,
  loadConfig,
  optionalStringVar,
  type ConfigOf,
  portVar,
  stringVar,
  type Env,
} from '../runtime/index.js';

export const decoderEnvSchema = z
  .object({
    ...commonEnvSchema,
    /** Checkpoint directory (Hugging Face Idefics2 layout; float16 for cuda). Required. */
    LOUPE_MODEL_DIR: z
      .string({ error: 'LOUPE_MODEL_DIR must name the checkpoint directory' })
      .min(1),
    /** Reported by Info; default the checkpoint directory's name. */
    LOUPE_MODEL_ID: optionalStringVar(),
    LOUPE_DECODER_HOST: stringVar('127.0.0.1'),
    LOUPE_DECODER_PORT: portVar(50053),
    LOUPE_DECODER_METRICS_PORT: portVar(9103),
    LOUPE_DECODER_EXECUTION_PROVIDER: enumVar(['cpu', 'cuda'], 'cpu'),
    /** Intra-op threads of the text session; 0 = one per physical core. */
    LOUPE_DECODER_THREADS: intVar(0, { min: 0, max: 1024 }),
    /** Sequences decoded at once: KV slots, each holding LOUPE_DECODER_MAX_CONTEXT tokens. */
    LOUPE_DECODER_MAX_RUNNING: intVar(16, { min: 1, max: 1024 }),
    /**
     * Tokens per sequence, prompt + generated. Checked at start against the model's
     * max_position_embeddings, and with LOUPE_DECODER_MAX_RUNNING and
     * LOUPE_DECODER_PREFIX_CACHE_BYTES against the memory the KV takes (capacity.ts).
     */
    LOUPE_DECODER_MAX_CONTEXT: intVar(2048, { min: 16, max: 131_072 }),
    /** Most tokens one request may generate. */
    LOUPE_DECODER_MAX_NEW_TOKENS: intVar(1024, { min: 1, max: 131_072 }),
    /** Requests waiting for a slot; over it: RESOURCE_EXHAUSTED. */
    LOUPE_DECODER_MAX_WAITING: intVar(64, { min: 0, max: 100_000 }),
    /**
     * Most prompt tokens per step, all prompts together (longer prompts are prefilled in
     * chunks; several short ones share a step).
     */
    LOUPE_DECODER_MAX_PREFILL_TOKENS: intVar(512, { min: 1, max: 131_072 }),
    /**
     * Longest a step may hold the running streams, ms: prompt chunks run beside the decode rows
     * only as far as the engine estimates they fit in this (a long prompt is cut into chunks
     * accordingly; docs/decoder-engine.md, "The loop"). At least 16 prompt tokens go with every
     * step, so a budget below a bare decode step slows prompts down but never stops them. 0:
     * no time budget (LOUPE_DECODER_MAX_PREFILL_TOKENS alone bounds a step). Below
     * LOUPE_DECODER_STEP_TIMEOUT_MS when that is set.
     */
    LOUPE_DECODER_MAX_STEP_MS: intVar(200, { min: 0, max: 600_000 }),
    /**
     * Memory for automatic prefix caching, bytes: the KV of prompts (and answers) stays after
     * their requests end, in blocks of 16 tokens, for later requests that start the same way
     * (a conversation's next turn, a shared system prompt, the same image); the least recently
     * used blocks go first. 0 turns it off. See docs/decoder-engine.md.
     */
    LOUPE_DECODER_PREFIX_CACHE_BYTES: intVar(1024 * 2 ** 20, { min: 0, max: 2 ** 50 }),
    /**
     * Quantized (GPTQ) checkpoints: `float` computes what the float model computes with the
     * dequantized weights; `int8` quantizes activations too (MatMulNBits accuracy level 4):
     * faster on CPU, not equal to the float model.
     */
    LOUPE_DECODER_QUANT_ACTIVATIONS: enumVar(['float', 'int8'], 'float'),
    /**
     * Where a quantized checkpoint's repacked text weights are written once and reused; default
     * `.loupe-cache` in the checkpoint when writable, else the system's temporary folder.
     */
    LOUPE_WEIGHT_CACHE_DIR: optionalStringVar(),
    /**
     * Longest the engine thread may leave requests without news (one step, an acceptance), ms;
     * 0: no limit. A step still going after it means the thread is stuck, and it is handled as
     * a thread that died (crashed or exited): every request fails with UNAVAILABLE
     * (`loupe-reason: worker_died`), health goes NOT_SERVING, an error line says `worker_died`,
     * and the process exits with code 70 for its supervisor to restart it — once the step is
     * over; a step not over within 5 s more gets the process killed (SIGKILL, logged as
     * `worker_stuck`). Set it well above the slowest step: a prefill of
     * LOUPE_DECODER_MAX_PREFILL_TOKENS tokens (or a decode step of LOUPE_DECODER_MAX_RUNNING
     * sequences at full context), on this hardware.
     */
    LOUPE_DECODER_STEP_TIMEOUT_MS: intVar(0, { min: 0, max: 86_400_000 }),
    /** Deadline applied to calls that carry none, ms. */
    LOUPE_DECODER_DEFAULT_DEADLINE_MS: intVar(600_000, { min: 1, max: 86_400_000 }),
    /**
     * Testing only: steps that would write KV at or past this position fail, as a model run
     * that fails does (fault-injection.ts); 0: off.
     */
    LOUPE_DECODER_TEST_FAULT_POSITION: intVar(0, { min: 0, max: 131_072 }),
  })
  .superRefine((config, context) => {
    // A step budget at or past the watchdog's limit would let the watchdog kill the thread for
    // a step the budget allowed.
    const timeout = config.LOUPE_DECODER_STEP_TIMEOUT_MS;
    if (timeout > 0 && config.LOUPE_DECODER_MAX_STEP_MS >= timeout) {
      context.addIssue({
        code: 'custom',
        path: ['LOUPE_DECODER_MAX_STEP_MS'],
        message: `must be below LOUPE_DECODER_STEP_TIMEOUT_MS (${timeout} ms), or 0`,
      });
    }
  });

/** The configuration object: each setting, and the variable it is read from. */
export const decoderLayout = {
  ...commonLayout,
  modelDir: 'LOUPE_MODEL_DIR',
  modelId: 'LOUPE_MODEL_ID',
  host: 'LOUPE_DECODER_HOST',
  port: 'LOUPE_DECODER_PORT',
  metricsPort: 'LOUPE_DECODER_METRICS_PORT',
  executionProvider: 'LOUPE_DECODER_EXECUTION_PROVIDER',
  threads: 'LOUPE_DECODER_THREADS',
  maxRunning: 'LOUPE_DECODER_MAX_RUNNING',
  maxContext: 'LOUPE_DECODER_MAX_CONTEXT',
  maxNewTokens: 'LOUPE_DECODER_MAX_NEW_TOKENS',
  maxWaiting: 'LOUPE_DECODER_MAX_WAITING',
  maxPrefillTokens: 'LOUPE_DECODER_MAX_PREFILL_TOKENS',
  maxStepMs: 'LOUPE_DECODER_MAX_STEP_MS',
  prefixCacheBytes: 'LOUPE_DECODER_PREFIX_CACHE_BYTES',
  quantActivations: 'LOUPE_DECODER_QUANT_ACTIVATIONS',
  weightCacheDir: 'LOUPE_WEIGHT_CACHE_DIR',
  stepTimeoutMs: 'LOUPE_DECODER_STEP_TIMEOUT_MS',
  defaultDeadlineMs: 'LOUPE_DECODER_DEFAULT_DEADLINE_MS',
  testFaultPosition: 'LOUPE_DECODER_TEST_FAULT_POSITION',
} as const;

export type DecoderConfig = ConfigOf<z.infer<typeof decoderEnvSchema>, typeof decoderLayout>;

export const loadDecoderConfig = (env: Env = process.env): DecoderConfig =>
  loadConfig(decoderEnvSchema, decoderLayout, env);
