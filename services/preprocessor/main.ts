// Starts the preprocessor service: `node dist/services/preprocessor/main.js`.
import { DEFAULT_IMAGE_PROCESSOR_CONFIG, loadImageProcessorConfig } from '../model/index.js';
import {
  createLogger,
  createRegistry,
  initTracing,
  MemoryBudget,
  runMain,
  startService,
  internalToken,
  stageTransport,
} from '../runtime/index.js';
import { decodeLimits, loadPreprocessorConfig, memoryBudgetBytes } from './config.js';
import { createPreprocessorMetrics } from './metrics.js';
import { PreprocessPool } from './pool.js';
import { registerPreprocessor } from './server.js';

const NAME = 'preprocessor';

async function main(): Promise<void> {
  const config = loadPreprocessorConfig();
  const logger = createLogger({ service: NAME, level: config.LOUPE_LOG_LEVEL });
  // TLS files and the health port are checked now, before a slow start fails late on them.
  const transport = stageTransport(config, logger);
  const processorConfig = config.LOUPE_MODEL_DIR
    ? loadImageProcessorConfig(config.LOUPE_MODEL_DIR)
    : DEFAULT_IMAGE_PROCESSOR_CONFIG;
  if (!config.LOUPE_MODEL_DIR)
    logger.info('LOUPE_MODEL_DIR is unset: using the idefics2-8b image processor settings');
  const limits = decodeLimits(config);
  const budget = new MemoryBudget(memoryBudgetBytes(config));
  const pool = new PreprocessPool({
    workers: config.LOUPE_PREPROCESSOR_WORKERS,
    maxQueue: config.LOUPE_PREPROCESSOR_MAX_QUEUE,
    setup: { processorConfig, limits },
    budget,
  });
  logger.info(
    {
      event: 'capacity',
      workers: config.LOUPE_PREPROCESSOR_WORKERS,
      memoryBudgetBytes: budget.limit,
      maxQueue: config.LOUPE_PREPROCESSOR_MAX_QUEUE,
    },
    `${config.LOUPE_PREPROCESSOR_WORKERS} worker threads, a memory budget of ${(budget.limit / 2 ** 20).toFixed(0)} MiB for images`,
  );
  const registry = createRegistry(NAME);
  const metrics = createPreprocessorMetrics(registry, {
    queueDepth: () => pool.queueDepth,
    budget,
  });
  const tracing = initTracing({
    serviceName: config.OTEL_SERVICE_NAME ?? `loupe-${NAME}`,
    otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
  });
  await startService({
    name: NAME,
    logger,
    tracing,
    registry,
    grpc: {
      host: config.LOUPE_PREPROCESSOR_HOST,
      port: config.LOUPE_PREPROCESSOR_PORT,
      maxMessageBytes: config.LOUPE_GRPC_MAX_MESSAGE_BYTES,
      reflection: config.LOUPE_GRPC_REFLECTION,
      maxConcurrentStreams: config.LOUPE_GRPC_MAX_CONCURRENT_STREAMS,
      token: internalToken(config),
      ...transport,
      reflectionProtos: ['loupe/v1/preprocessor.proto'],
      defaultDeadlineMs: config.LOUPE_PREPROCESSOR_DEFAULT_DEADLINE_MS,
    },
    metrics: { host: config.LOUPE_PREPROCESSOR_HOST, port: config.LOUPE_PREPROCESSOR_METRICS_PORT },
    shutdownGraceMs: config.LOUPE_SHUTDOWN_GRACE_MS,
    register: (server) =>
      registerPreprocessor(server, { pool, metrics, processorConfig, limits, budget }),
    close: () => pool.close(),
  });
}

runMain(NAME, main);
