// Starts the encoder service: `node dist/services/encoder/main.js`.
import { basename, resolve } from 'node:path';
import {
  ConfigError,
  createLogger,
  createRegistry,
  exitForDeadWorker,
  initTracing,
  runMain,
  startService,
  type GrpcServer,
  type RunningService,
  internalToken,
  stageTransport,
} from '../runtime/index.js';
import { Batcher } from './batcher.js';
import { EmbeddingCache } from './cache.js';
import { loadEncoderConfig } from './config.js';
import { createEncoderMetrics } from './metrics.js';
import { VisionRunner } from './runner.js';
import { registerEncoder } from './server.js';

const NAME = 'encoder';

async function main(): Promise<void> {
  const config = loadEncoderConfig();
  const logger = createLogger({ service: NAME, level: config.LOUPE_LOG_LEVEL });
  // TLS files and the health port are checked now, before a slow start fails late on them.
  const transport = stageTransport(config, logger);
  const modelDir = resolve(config.LOUPE_MODEL_DIR);
  const modelId = config.LOUPE_MODEL_ID ?? basename(modelDir);
  const loadStarted = performance.now();
  const runner = await VisionRunner.start(
    {
      modelDir,
      executionProvider: config.LOUPE_ENCODER_EXECUTION_PROVIDER,
      intraOpThreads: config.LOUPE_ENCODER_THREADS,
      ...(config.LOUPE_WEIGHT_CACHE_DIR ? { weightCacheDir: config.LOUPE_WEIGHT_CACHE_DIR } : {}),
    },
    { runTimeoutMs: config.LOUPE_ENCODER_RUN_TIMEOUT_MS },
  );
  // Without its model thread the service cannot serve: NOT_SERVING, and exit to be restarted.
  const running: { server?: GrpcServer; service?: RunningService } = {};
  runner.onDeath = (death) =>
    void exitForDeadWorker(death, {
      logger,
      server: running.server,
      stop: running.service?.stop,
      threadEnded: runner.ended,
      stallSetting: 'LOUPE_ENCODER_RUN_TIMEOUT_MS',
    });
  logger.info(
    {
      event: 'model_loaded',
      modelDir,
      modelId,
      executionProvider: config.LOUPE_ENCODER_EXECUTION_PROVIDER,
      ms: Math.round(performance.now() - loadStarted),
      ...runner.info,
    },
    `vision model ${modelId} loaded: ${runner.info.weightFormat}, ${(runner.info.weightBytes / 2 ** 20).toFixed(1)} MiB of weights`,
  );

  // A run of the largest sub-image alone must be allowed, or such requests could never run.
  const largest = runner.info.maxSide ** 2;
  const maxBatchPixels =
    config.LOUPE_ENCODER_MAX_BATCH_PIXELS || config.LOUPE_ENCODER_MAX_BATCH * largest;
  if (maxBatchPixels < largest) {
    throw new ConfigError(
      `invalid configuration:\n  LOUPE_ENCODER_MAX_BATCH_PIXELS: must be at least ${largest} (one ${runner.info.maxSide}×${runner.info.maxSide} sub-image, the model's largest) (got "${config.LOUPE_ENCODER_MAX_BATCH_PIXELS}")`,
    );
  }

  const registry = createRegistry(NAME, modelId);
  // The cache and the batcher report into the metrics, and the metrics read them back; every
  // reference sits in a callback, so the order of construction does not matter.
  const cache =
    config.LOUPE_ENCODER_CACHE_BYTES > 0
      ? new EmbeddingCache(config.LOUPE_ENCODER_CACHE_BYTES, () => metrics.cacheEvictions.inc())
      : undefined;
  const batcher = new Batcher({
    maxBatch: config.LOUPE_ENCODER_MAX_BATCH,
    maxWaitMs: config.LOUPE_ENCODER_MAX_WAIT_MS,
    maxQueue: config.LOUPE_ENCODER_MAX_QUEUE,
    maxPadding: config.LOUPE_ENCODER_MAX_PADDING_PERCENT / 100,
    maxPixels: maxBatchPixels,
    run: (subImages, dtypes) => runner.run(subImages, dtypes),
    onBatch: ({ size, waitsMs, computeMs }) => {
      metrics.batchSize.observe(size);
      metrics.compute.observe(computeMs / 1000);
      for (const wait of waitsMs) metrics.queueWait.observe(wait / 1000);
    },
  });
  const metrics = createEncoderMetrics(registry, {
    queueDepth: () => batcher.queueDepth,
    cacheBytes: () => cache?.bytes ?? 0,
    cacheEntries: () => cache?.size ?? 0,
  });
  metrics.weightBytes.set({ format: runner.info.weightFormat }, runner.info.weightBytes);
  const limits = {
    maxSubImages: config.LOUPE_ENCODER_MAX_SUB_IMAGES,
    maxBatch: config.LOUPE_ENCODER_MAX_BATCH,
    maxQueue: config.LOUPE_ENCODER_MAX_QUEUE,
    maxBatchPixels,
  };
  const tracing = initTracing({
    serviceName: config.OTEL_SERVICE_NAME ?? `loupe-${NAME}`,
    otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
  });
  running.service = await startService({
    name: NAME,
    logger,
    tracing,
    registry,
    grpc: {
      host: config.LOUPE_ENCODER_HOST,
      port: config.LOUPE_ENCODER_PORT,
      maxMessageBytes: config.LOUPE_GRPC_MAX_MESSAGE_BYTES,
      reflection: config.LOUPE_GRPC_REFLECTION,
      maxConcurrentStreams: config.LOUPE_GRPC_MAX_CONCURRENT_STREAMS,
      token: internalToken(config),
      ...transport,
      reflectionProtos: ['loupe/v1/encoder.proto'],
      defaultDeadlineMs: config.LOUPE_ENCODER_DEFAULT_DEADLINE_MS,
    },
    metrics: { host: config.LOUPE_ENCODER_HOST, port: config.LOUPE_ENCODER_METRICS_PORT },
    shutdownGraceMs: config.LOUPE_SHUTDOWN_GRACE_MS,
    register: (server) => {
      running.server = server;
      registerEncoder(server, {
        modelId,
        model: runner.info,
        limits,
        batcher,
        cache,
        metrics,
      });
    },
    close: async () => {
      batcher.close();
      await runner.close();
    },
  });
}

runMain(NAME, main);
