// Starts the preprocessor service: `node dist/services/preprocessor/main.js`.
import { DEFAULT_IMAGE_PROCESSOR_CONFIG, loadImageProcessorConfig } from '../model/index.js';
import { createRegistry, MemoryBudget, runService } from '../runtime/index.js';
import { decodeLimits, loadPreprocessorConfig, memoryBudgetBytes } from './config.js';
import { createPreprocessorMetrics } from './metrics.js';
import { PreprocessPool } from './pool.js';
import { registerPreprocessor } from './server.js';

const NAME = 'preprocessor';

runService({
  name: NAME,
  serves: 'grpc',
  reflectionProtos: ['loupe/v1/preprocessor.proto'],
  loadConfig: loadPreprocessorConfig,
  async start({ config, logger }) {
    const processorConfig = config.modelDir
      ? loadImageProcessorConfig(config.modelDir)
      : DEFAULT_IMAGE_PROCESSOR_CONFIG;
    if (!config.modelDir)
      logger.info('LOUPE_MODEL_DIR is unset: using the idefics2-8b image processor settings');
    const limits = decodeLimits(config);
    const budget = new MemoryBudget(memoryBudgetBytes(config));
    const pool = new PreprocessPool({
      workers: config.workers,
      maxQueue: config.maxQueue,
      setup: { processorConfig, limits },
      budget,
    });
    logger.info(
      {
        event: 'capacity',
        workers: config.workers,
        memoryBudgetBytes: budget.limit,
        maxQueue: config.maxQueue,
      },
      `${config.workers} worker threads, a memory budget of ${(budget.limit / 2 ** 20).toFixed(0)} MiB for images`,
    );
    const registry = createRegistry(NAME);
    const metrics = createPreprocessorMetrics(registry, {
      queueDepth: () => pool.queueDepth,
      budget,
    });
    return {
      registry,
      register: (server) =>
        registerPreprocessor(server, { pool, metrics, processorConfig, limits, budget }),
      close: () => pool.close(),
    };
  },
});
