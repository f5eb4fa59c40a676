// Starts the encoder service: `node dist/services/encoder/main.js`.
import { basename, resolve } from 'node:path';
import { ConfigError, createRegistry, runService } from '../runtime/index.js';
import { Batcher } from './batcher.js';
import { EmbeddingCache } from './cache.js';
import { encoderMemoryBudget, loadEncoderConfig } from './config.js';
import { createEncoderMetrics } from './metrics.js';
import { estimateRunBytes, largestRunBytes } from './run-memory.js';
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
    // What the process holds with the model loaded (runtime, weights, session): the default
    // memory budget for runs is what the container's limit leaves beside it.
    const residentBytes = process.memoryUsage.rss();
    const { memory: memoryModel, ...modelInfo } = runner.info;
    logger.info(
      {
        event: 'model_loaded',
        modelDir,
        modelId,
        executionProvider: config.executionProvider,
        ms: Math.round(performance.now() - loadStarted),
        residentBytes,
        ...modelInfo,
      },
      `vision model ${modelId} loaded: ${runner.info.weightFormat}, ${(runner.info.weightBytes / 2 ** 20).toFixed(1)} MiB of weights`,
    );

    // A run of the largest sub-image alone must fit the memory budget and the pixel bound, or
    // such requests could never run.
    const { maxSide } = runner.info;
    const largest = maxSide ** 2;
    const largestBytes = largestRunBytes(memoryModel, maxSide);
    const budget = encoderMemoryBudget(config, residentBytes);
    if (budget.bytes < largestBytes) {
      throw new ConfigError(
        `invalid configuration:\n  LOUPE_ENCODER_MEMORY_BUDGET_BYTES: must be at least ${largestBytes} (the estimated memory of one ${maxSide}×${maxSide} sub-image's run, the model's largest) (got ${budget.bytes}, ${budget.source})${config.memoryBudgetBytes > 0 ? '' : ': raise the memory limit, lower LOUPE_ENCODER_CACHE_BYTES, or set LOUPE_ENCODER_MEMORY_BUDGET_BYTES'}`,
      );
    }
    // By default, as many largest sub-images as the budget admits in one run, up to maxBatch.
    let fitting = 1;
    while (
      fitting < config.maxBatch &&
      estimateRunBytes(
        memoryModel,
        Array.from({ length: fitting + 1 }, () => ({ height: maxSide, width: maxSide })),
      ) <= budget.bytes
    )
      fitting++;
    const maxBatchPixels = config.maxBatchPixels || fitting * largest;
    if (maxBatchPixels < largest) {
      throw new ConfigError(
        `invalid configuration:\n  LOUPE_ENCODER_MAX_BATCH_PIXELS: must be at least ${largest} (one ${maxSide}×${maxSide} sub-image, the model's largest) (got "${config.maxBatchPixels}")`,
      );
    }
    logger.info(
      {
        event: 'capacity',
        memoryBudgetBytes: Number.isFinite(budget.bytes) ? budget.bytes : null,
        memoryBudgetSource: budget.source,
        largestRunBytes: largestBytes,
        maxBatchPixels,
      },
      Number.isFinite(budget.bytes)
        ? `a memory budget of ${(budget.bytes / 2 ** 20).toFixed(0)} MiB for model runs (one ${maxSide}×${maxSide} sub-image: about ${(largestBytes / 2 ** 20).toFixed(0)} MiB)`
        : 'no memory budget for model runs (cuda)',
    );

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
      memoryBudgetBytes: budget.bytes,
      estimateRunBytes: (sizes) => estimateRunBytes(memoryModel, sizes),
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
      memoryBudget: () => batcher.memory,
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
