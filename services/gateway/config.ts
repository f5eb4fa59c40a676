// The gateway's configuration: every variable, its default and its bounds, in one place.
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import {
  commonEnvSchema,
  commonLayout,
  intVar,
  loadConfig,
  optionalStringVar,
  type ConfigOf,
  portVar,
  stringVar,
  type Env,
} from '../runtime/index.js';

const list = (defaultValue: string) =>
  stringVar(defaultValue).transform((v) =>
    v
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  );

export const gatewayEnvSchema = z.object({
  ...commonEnvSchema,
  /** Checkpoint directory: tokenizer, chat template and image-processor settings. Required. */
  LOUPE_MODEL_DIR: z.string({ error: 'LOUPE_MODEL_DIR must name the checkpoint directory' }).min(1),
  /** The `model` clients name; default the checkpoint directory's name. */
  LOUPE_MODEL_ID: optionalStringVar(),
  LOUPE_GATEWAY_HOST: stringVar('127.0.0.1'),
  LOUPE_GATEWAY_PORT: portVar(8080),
  /**
   * Port of GET /metrics and /healthz, apart from the API so that no public route (an Ingress
   * in front of the API port) exposes them; bound to LOUPE_GATEWAY_METRICS_HOST.
   */
  LOUPE_GATEWAY_METRICS_PORT: portVar(9100),
  LOUPE_GATEWAY_METRICS_HOST: stringVar('127.0.0.1'),
  /** Stage endpoints, comma-separated host:port lists. */
  LOUPE_PREPROCESSOR_ENDPOINTS: list('127.0.0.1:50051'),
  LOUPE_ENCODER_ENDPOINTS: list('127.0.0.1:50052'),
  LOUPE_DECODER_ENDPOINTS: list('127.0.0.1:50053'),
  /** API keys, comma-separated; or a file with one key per line. None: loopback only. */
  LOUPE_GATEWAY_API_KEYS: list(''),
  LOUPE_GATEWAY_API_KEYS_FILE: optionalStringVar(),
  /**
   * Host names (the Host header, without its port) the API answers; empty: any when API keys
   * are configured, else only loopback names (localhost, *.localhost, 127.0.0.1, ::1), so no
   * web page can reach a keyless local gateway through DNS rebinding.
   */
  LOUPE_GATEWAY_ALLOWED_HOSTS: list(''),
  /**
   * Origins (scheme://host:port) whose browser requests the API takes; a request with any
   * other Origin header gets 403. Empty: none (the gateway serves no CORS).
   */
  LOUPE_GATEWAY_ALLOWED_ORIGINS: list(''),
  /**
   * A stream whose client does not take a chunk within this time is ended (its decoder work
   * cancelled), so clients that do not read cannot hold the gateway; ms.
   */
  LOUPE_GATEWAY_STREAM_WRITE_TIMEOUT_MS: intVar(30_000, { min: 100, max: 3_600_000 }),
  /** Largest request body, bytes. */
  LOUPE_GATEWAY_MAX_BODY_BYTES: intVar(32 * 1024 * 1024, { min: 1024, max: 1024 ** 3 }),
  /**
   * Bytes that requests in flight may hold (3 × each body, plus the byte cap of each image
   * to fetch), reserved before the memory is committed; 0 = half the container's memory
   * limit, or a quarter of the machine's memory without one.
   */
  LOUPE_GATEWAY_MEMORY_BUDGET_BYTES: intVar(0, { min: 0, max: 2 ** 50 }),
  LOUPE_GATEWAY_MAX_IMAGES: intVar(8, { min: 0, max: 256 }),
  /** Choices (`n`) per request: each is a sequence in the decoder, sharing the prompt's KV. */
  LOUPE_GATEWAY_MAX_CHOICES: intVar(8, { min: 1, max: 128 }),
  LOUPE_GATEWAY_MAX_IMAGE_BYTES: intVar(20 * 1024 * 1024, { min: 1, max: 1024 ** 3 }),
  /** Requests handled at once; beyond it 429. */
  LOUPE_GATEWAY_MAX_IN_FLIGHT: intVar(256, { min: 1, max: 100_000 }),
  /**
   * Requests one key (one client address without keys) may have in flight; 0 = no limit. Keep
   * it at most half the decoder slots the gateway reaches (LOUPE_DECODER_MAX_RUNNING × decoder
   * replicas; the default 8 is half of one decoder's 16), so that no client holds every slot
   * while another's request waits for one; raise it with the replicas.
   */
  LOUPE_GATEWAY_MAX_IN_FLIGHT_PER_KEY: intVar(8, { min: 0, max: 100_000 }),
  /** Failed authentications per client address per minute before 429s; 0 = no limit. */
  LOUPE_GATEWAY_AUTH_FAILURES_PER_MINUTE: intVar(30, { min: 0, max: 1_000_000 }),
  /**
   * Characters of message text per request, checked before any templating or tokenizing;
   * 0 = 16 × the model's max_position_embeddings (a token is rarely over 16 characters).
   */
  LOUPE_GATEWAY_MAX_PROMPT_CHARS: intVar(0, { min: 0, max: 1_000_000_000 }),
  /** Threads that template and tokenize long prompts off the event loop. */
  LOUPE_GATEWAY_PROMPT_THREADS: intVar(2, { min: 1, max: 64 }),
  /** Messages per request; 0 = max_position_embeddings / 2 (each costs a few tokens). */
  LOUPE_GATEWAY_MAX_MESSAGES: intVar(0, { min: 0, max: 10_000_000 }),
  /** Per API key (or per client address without keys); 0 = no limit. */
  LOUPE_GATEWAY_REQUESTS_PER_MINUTE: intVar(0, { min: 0, max: 10_000_000 }),
  LOUPE_GATEWAY_TOKENS_PER_MINUTE: intVar(0, { min: 0, max: 1_000_000_000 }),
  /** Image fetching: whole fetch and connect timeouts, redirects, allow-list of hosts/CIDRs. */
  LOUPE_GATEWAY_FETCH_TIMEOUT_MS: intVar(10_000, { min: 1, max: 600_000 }),
  LOUPE_GATEWAY_FETCH_CONNECT_TIMEOUT_MS: intVar(3_000, { min: 1, max: 600_000 }),
  LOUPE_GATEWAY_FETCH_MAX_REDIRECTS: intVar(3, { min: 0, max: 20 }),
  LOUPE_GATEWAY_FETCH_ALLOW: list(''),
  /** Deadline of a whole request, internal calls included, ms. */
  LOUPE_GATEWAY_REQUEST_TIMEOUT_MS: intVar(600_000, { min: 1, max: 86_400_000 }),
});

/** The configuration object: each setting, and the variable it is read from. */
export const gatewayLayout = {
  ...commonLayout,
  modelDir: 'LOUPE_MODEL_DIR',
  modelId: 'LOUPE_MODEL_ID',
  host: 'LOUPE_GATEWAY_HOST',
  port: 'LOUPE_GATEWAY_PORT',
  metricsPort: 'LOUPE_GATEWAY_METRICS_PORT',
  metricsHost: 'LOUPE_GATEWAY_METRICS_HOST',
  endpoints: {
    preprocessor: 'LOUPE_PREPROCESSOR_ENDPOINTS',
    encoder: 'LOUPE_ENCODER_ENDPOINTS',
    decoder: 'LOUPE_DECODER_ENDPOINTS',
  },
  apiKeys: 'LOUPE_GATEWAY_API_KEYS',
  apiKeysFile: 'LOUPE_GATEWAY_API_KEYS_FILE',
  allowedHosts: 'LOUPE_GATEWAY_ALLOWED_HOSTS',
  allowedOrigins: 'LOUPE_GATEWAY_ALLOWED_ORIGINS',
  streamWriteTimeoutMs: 'LOUPE_GATEWAY_STREAM_WRITE_TIMEOUT_MS',
  maxBodyBytes: 'LOUPE_GATEWAY_MAX_BODY_BYTES',
  memoryBudgetBytes: 'LOUPE_GATEWAY_MEMORY_BUDGET_BYTES',
  maxImages: 'LOUPE_GATEWAY_MAX_IMAGES',
  maxChoices: 'LOUPE_GATEWAY_MAX_CHOICES',
  maxImageBytes: 'LOUPE_GATEWAY_MAX_IMAGE_BYTES',
  maxInFlight: 'LOUPE_GATEWAY_MAX_IN_FLIGHT',
  maxInFlightPerKey: 'LOUPE_GATEWAY_MAX_IN_FLIGHT_PER_KEY',
  authFailuresPerMinute: 'LOUPE_GATEWAY_AUTH_FAILURES_PER_MINUTE',
  maxPromptChars: 'LOUPE_GATEWAY_MAX_PROMPT_CHARS',
  promptThreads: 'LOUPE_GATEWAY_PROMPT_THREADS',
  maxMessages: 'LOUPE_GATEWAY_MAX_MESSAGES',
  requestsPerMinute: 'LOUPE_GATEWAY_REQUESTS_PER_MINUTE',
  tokensPerMinute: 'LOUPE_GATEWAY_TOKENS_PER_MINUTE',
  fetch: {
    timeoutMs: 'LOUPE_GATEWAY_FETCH_TIMEOUT_MS',
    connectTimeoutMs: 'LOUPE_GATEWAY_FETCH_CONNECT_TIMEOUT_MS',
    maxRedirects: 'LOUPE_GATEWAY_FETCH_MAX_REDIRECTS',
    allow: 'LOUPE_GATEWAY_FETCH_ALLOW',
  },
  requestTimeoutMs: 'LOUPE_GATEWAY_REQUEST_TIMEOUT_MS',
} as const;

export type GatewayConfig = ConfigOf<z.infer<typeof gatewayEnvSchema>, typeof gatewayLayout>;

export const loadGatewayConfig = (env: Env = process.env): GatewayConfig =>
  loadConfig(gatewayEnvSchema, gatewayLayout, env);

/** Every configured API key: the variable's and the file's. */
export function apiKeys(config: GatewayConfig): string[] {
  const keys = [...config.apiKeys];
  if (config.apiKeysFile) {
    const text = readFileSync(config.apiKeysFile, 'utf8');
    keys.push(
      ...text
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l && !l.startsWith('#')),
    );
  }
  return keys;
}
