// Starts the gateway: `node dist/services/gateway/main.js`.
import { basename, resolve } from 'node:path';
import { serve } from '@hono/node-server';
import {
  loadChatTemplate,
  loadImageProcessorConfig,
  loadTokenizer,
  openCheckpoint,
} from '../model/index.js';
import {
  ConfigError,
  createLogger,
  createRegistry,
  initTracing,
  onShutdownSignal,
  internalToken,
  grpcTlsConfig,
  runMain,
  startMetricsServer,
} from '../runtime/index.js';
import { createGateway } from './app.js';
import { PromptPool } from './prompt-pool.js';
import { apiKeys, loadGatewayConfig } from './config.js';
import { parseEndpoints } from './discovery.js';
import { Stages } from './stages.js';

const NAME = 'gateway';
const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

async function main(): Promise<void> {
  const config = loadGatewayConfig();
  let keys: string[];
  try {
    keys = apiKeys(config);
  } catch (error) {
    throw new ConfigError(`LOUPE_GATEWAY_API_KEYS_FILE: ${(error as Error).message}`);
  }
  const logger = createLogger({ service: NAME, level: config.LOUPE_LOG_LEVEL });
  if (keys.length === 0 && !LOOPBACK.has(config.LOUPE_GATEWAY_HOST)) {
    throw new ConfigError(
      `no API keys are configured (LOUPE_GATEWAY_API_KEYS or LOUPE_GATEWAY_API_KEYS_FILE), so the gateway only listens on loopback; LOUPE_GATEWAY_HOST is ${config.LOUPE_GATEWAY_HOST}`,
    );
  }
  if (keys.length === 0)
    logger.warn('no API keys configured: serving without authentication, on loopback only');
  const modelDir = resolve(config.LOUPE_MODEL_DIR);
  const checkpoint = openCheckpoint(modelDir);
  const tracing = initTracing({
    serviceName: config.OTEL_SERVICE_NAME ?? `loupe-${NAME}`,
    otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
  });
  const registry = createRegistry(NAME, config.LOUPE_MODEL_ID ?? basename(modelDir));
  let sources;
  try {
    sources = {
      preprocessor: parseEndpoints(config.LOUPE_PREPROCESSOR_ENDPOINTS),
      encoder: parseEndpoints(config.LOUPE_ENCODER_ENDPOINTS),
      decoder: parseEndpoints(config.LOUPE_DECODER_ENDPOINTS),
    };
  } catch (error) {
    throw new ConfigError(`invalid configuration: ${(error as Error).message}`);
  }
  const token = internalToken(config);
  const tls = grpcTlsConfig(config);
  const stages = new Stages(sources, config.LOUPE_GRPC_MAX_MESSAGE_BYTES, {
    logger,
    ...(token === undefined ? {} : { token }),
    ...(tls === undefined ? {} : { tls }),
  });
  const modelId = config.LOUPE_MODEL_ID ?? basename(modelDir);
  const prompts = new PromptPool({ modelDir, threads: config.LOUPE_GATEWAY_PROMPT_THREADS });
  const { app, inFlight, drain, close } = createGateway({
    config,
    modelId,
    tokenizer: loadTokenizer(modelDir),
    template: loadChatTemplate(modelDir),
    processor: loadImageProcessorConfig(modelDir),
    imageTokenId: checkpoint.config.imageTokenId,
    maxPositions: checkpoint.config.text.maxPositionEmbeddings,
    stages,
    keys,
    registry,
    logger,
    tracer: tracing.tracer,
    prompts,
  });
  const server = serve({
    fetch: app.fetch,
    hostname: config.LOUPE_GATEWAY_HOST,
    port: config.LOUPE_GATEWAY_PORT,
  });
  await new Promise<void>((resolveListen, reject) => {
    server.once('listening', () => resolveListen());
    server.once('error', reject);
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.LOUPE_GATEWAY_PORT;
  const metricsServer = await startMetricsServer({
    registry,
    host: config.LOUPE_GATEWAY_METRICS_HOST,
    port: config.LOUPE_GATEWAY_METRICS_PORT,
  });
  // Before the ready line: whoever reads it may signal at once (see runtime/service.ts).
  onShutdownSignal(logger, async () => {
    // Stop accepting, let requests in flight finish within the grace period, then close.
    drain();
    server.close();
    const until = Date.now() + config.LOUPE_SHUTDOWN_GRACE_MS;
    while (inFlight() > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    const drained = inFlight() === 0;
    logger.info({ event: 'stopped', drained }, 'gateway stopped');
    close();
    stages.close();
    await prompts.close();
    await metricsServer.close();
    await tracing.shutdown();
  });
  logger.info(
    {
      event: 'ready',
      httpHost: config.LOUPE_GATEWAY_HOST,
      httpPort: port,
      metricsHost: config.LOUPE_GATEWAY_METRICS_HOST,
      metricsPort: metricsServer.port,
      modelId,
    },
    `gateway ready: http://${config.LOUPE_GATEWAY_HOST}:${port}/v1/chat/completions (model ${modelId}), metrics on http://${config.LOUPE_GATEWAY_METRICS_HOST}:${metricsServer.port}/metrics`,
  );
}

runMain(NAME, main);
