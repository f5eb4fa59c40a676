// Starts the decoder service: `node dist/services/decoder/main.js`.
import { basename, resolve } from 'node:path';
import { createRegistry, runService } from '../runtime/index.js';
import { openCheckpoint } from '../model/index.js';
import { checkKvCapacity } from './capacity.js';
import { loadDecoderConfig } from './config.js';
import { EngineClient } from './engine-client.js';
import { createDecoderMetrics } from './metrics.js';
import { registerDecoder } from './server.js';

const NAME = 'decoder';

runService({
  name: NAME,
  serves: 'grpc',
  reflectionProtos: ['loupe/v1/decoder.proto'],
  loadConfig: loadDecoderConfig,
  async start({ config, logger, exitOnDeath }) {
    const modelDir = resolve(config.modelDir);
    const modelId = config.modelId ?? basename(modelDir);
    // A context past the model's positions or KV past the machine's memory: exit 2 now.
    const kv = checkKvCapacity(openCheckpoint(modelDir), {
      maxRunning: config.maxRunning,
      maxContext: config.maxContext,
      maxPrefillTokens: config.maxPrefillTokens,
      prefixCacheBytes: config.prefixCacheBytes,
      executionProvider: config.executionProvider,
    });
    const loadStarted = performance.now();
    const engine = await EngineClient.start(
      {
        modelDir,
        executionProvider: config.executionProvider,
        intraOpThreads: config.threads,
        quantized: {
          int8Activations: config.quantActivations === 'int8',
          ...(config.weightCacheDir ? { weightCacheDir: config.weightCacheDir } : {}),
        },
        engine: {
          maxRunning: config.maxRunning,
          maxContext: config.maxContext,
          maxWaiting: config.maxWaiting,
          maxPrefillTokens: config.maxPrefillTokens,
          maxStepMs: config.maxStepMs,
          prefixCacheBlocks: kv.prefixCacheBlocks,
        },
        ...(config.testFaultPosition > 0 ? { faultAtPosition: config.testFaultPosition } : {}),
      },
      { stepTimeoutMs: config.stepTimeoutMs },
    );
    // Without its engine thread the service cannot serve: NOT_SERVING, and exit to be restarted.
    engine.onDeath = exitOnDeath(engine, 'LOUPE_DECODER_STEP_TIMEOUT_MS');
    logger.info(
      {
        event: 'model_loaded',
        modelDir,
        modelId,
        executionProvider: config.executionProvider,
        ms: Math.round(performance.now() - loadStarted),
        ...engine.info,
        activations: config.quantActivations,
      },
      `text model ${modelId} loaded: ${engine.info.weightFormat}, ${(engine.info.weightBytes / 2 ** 20).toFixed(1)} MiB of weights`,
    );
    if (
      engine.info.weightFormat.startsWith('gptq-8bit') &&
      config.quantActivations === 'float' &&
      config.executionProvider === 'cpu'
    ) {
      // onnxruntime 1.30's CPU kernel for 8-bit weights with float activations is not
      // vectorized: measured 7x slower than float32 weights on the small checkpoint.
      logger.warn(
        { event: 'slow_kernel', weightFormat: engine.info.weightFormat },
        '8-bit weights with float activations decode slowly on CPU; set LOUPE_DECODER_QUANT_ACTIVATIONS=int8 or use 4-bit weights',
      );
    }
    const registry = createRegistry(NAME, modelId);
    const metrics = createDecoderMetrics(registry, () => engine.load);
    metrics.weightBytes.set({ format: engine.info.weightFormat }, engine.info.weightBytes);
    engine.onStep = ({ kind, batch, ms, prefixQueries, prefixHits }) => {
      metrics.batchSize.observe({ step: kind }, batch);
      metrics.stepSeconds.observe({ step: kind }, ms / 1000);
      if (prefixQueries > 0) metrics.prefixCacheQueries.inc(prefixQueries);
      if (prefixHits > 0) metrics.prefixCacheHits.inc(prefixHits);
    };
    return {
      registry,
      register: (server) =>
        registerDecoder(server, {
          modelId,
          engine,
          limits: { maxContext: config.maxContext, maxNewTokens: config.maxNewTokens },
          metrics,
        }),
      close: () => engine.close(),
    };
  },
});
