// Starts the encoder service: `node dist/services/encoder/main.js`.
import { basename, resolve } from 'node:path';
import { ConfigError, createRegistry, runService } from '../runtime/index.js';
import { Batcher } from './batcher.js';
import { EmbeddingCache } from './cache.js';
import { loadEncoderConfig } from './config.js';
import { createEncoderMetrics } from './metrics.js';
import { VisionRunner } from './runner.js';
import { registerEncoder } from './server.js';

const NAME = 'encoder';

runService({
  name: NAME,
  serves: 'grpc',
  reflectionProtos: ['loupe/v1/encoder.proto'],
  loadConfig: loadEncoderConfig,
  async start({ config, logger, exitOnDeath }) {
    const modelDir = resolve(config.modelDir);
    const modelId = config.modelId ?? basename(modelDir);
    const loadStarted = performance.now();
    const runner = await VisionRunner.start(
      {
        modelDir,
        executionProvider: config.executionProvider,
        intraOpThreads: config.threads,
        ...(config.weightCacheDir ? { weightCacheDir: config.weightCacheDir } : {}),
      },
      { runTimeoutMs: config.runTimeoutMs },
    );
    // Without its model thread the service cannot serve: NOT_SERVING, and exit to be restarted.
    runner.onDeath = exitOnDeath(runner, 'LOUPE_ENCODER_RUN_TIMEOUT_MS');
    logger.info(
      {
        event: 'model_loaded',
        modelDir,
        modelId,
        executionProvider: config.executionProvider,
        ms: Math.round(performance.now() - loadStarted),
        ...runner.info,
      },
      `vision model ${modelId} loaded: ${runner.info.weightFormat}, ${(runner.info.weightBytes / 2 ** 20).toFixed(1)} MiB of weights`,
    );

    // A run of the largest sub-image alone must be allowed, or such requests could never run.
    const largest = runner.info.maxSide ** 2;
    const maxBatchPixels = config.maxBatchPixels || config.maxBatch * largest;
    if (maxBatchPixels < largest) {
      throw new ConfigError(
        `invalid configuration:\n  LOUPE_ENCODER_MAX_BATCH_PIXELS: must be at least ${largest} (one ${runner.info.maxSide}×${runner.info.maxSide} sub-image, the model's largest) (got "${config.maxBatchPixels}")`,
      );
    }

    const registry = createRegistry(NAME, modelId);
    // The cache and the batcher report into the metrics, and the metrics read them back; every
    // reference sits in a callback, so the order of construction does not matter.
    const cache =
      config.cacheBytes > 0
        ? new EmbeddingCache(config.cacheBytes, () => metrics.cacheEvictions.inc())
        : undefined;
    const batcher = new Batcher({
      maxBatch: config.maxBatch,
      maxWaitMs: config.maxWaitMs,
      maxQueue: config.maxQueue,
      maxPadding: config.maxPaddingPercent / 100,
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
      maxSubImages: config.maxSubImages,
      maxBatch: config.maxBatch,
      maxQueue: config.maxQueue,
      maxBatchPixels,
    };
    return {
      registry,
      register: (server) =>
        registerEncoder(server, {
          modelId,
          model: runner.info,
          limits,
          batcher,
          cache,
          metrics,
        }),
      close: async () => {
        batcher.close();
        await runner.close();
      },
    };
  },
});
