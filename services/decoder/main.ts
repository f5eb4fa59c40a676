// Starts the decoder service: `node dist/services/decoder/main.js`.
import { basename, resolve } from 'node:path';
import {
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
import { openCheckpoint } from '../model/index.js';
import { checkKvCapacity } from './capacity.js';
import { loadDecoderConfig } from './config.js';
import { EngineClient } from './engine-client.js';
import { createDecoderMetrics } from './metrics.js';
import { registerDecoder } from './server.js';

const NAME = 'decoder';

async function main(): Promise<void> {
  const config = loadDecoderConfig();
  const logger = createLogger({ service: NAME, level: config.LOUPE_LOG_LEVEL });
  // TLS files and the health port are checked now, before a slow start fails late on them.
  const transport = stageTransport(config, logger);
  const modelDir = resolve(config.LOUPE_MODEL_DIR);
  const modelId = config.LOUPE_MODEL_ID ?? basename(modelDir);
  // A context past the model's positions or KV past the machine's memory: exit 2 now.
  const kv = checkKvCapacity(openCheckpoint(modelDir), {
    maxRunning: config.LOUPE_DECODER_MAX_RUNNING,
    maxContext: config.LOUPE_DECODER_MAX_CONTEXT,
    prefixCacheBytes: config.LOUPE_DECODER_PREFIX_CACHE_BYTES,
    executionProvider: config.LOUPE_DECODER_EXECUTION_PROVIDER,
  });
  const loadStarted = performance.now();
  const engine = await EngineClient.start(
    {
      modelDir,
      executionProvider: config.LOUPE_DECODER_EXECUTION_PROVIDER,
      intraOpThreads: config.LOUPE_DECODER_THREADS,
      quantized: {
        int8Activations: config.LOUPE_DECODER_QUANT_ACTIVATIONS === 'int8',
        ...(config.LOUPE_WEIGHT_CACHE_DIR ? { weightCacheDir: config.LOUPE_WEIGHT_CACHE_DIR } : {}),
      },
      engine: {
        maxRunning: config.LOUPE_DECODER_MAX_RUNNING,
        maxContext: config.LOUPE_DECODER_MAX_CONTEXT,
        maxWaiting: config.LOUPE_DECODER_MAX_WAITING,
        maxPrefillTokens: config.LOUPE_DECODER_MAX_PREFILL_TOKENS,
        maxStepMs: config.LOUPE_DECODER_MAX_STEP_MS,
        prefixCacheBlocks: kv.prefixCacheBlocks,
      },
      ...(config.LOUPE_DECODER_TEST_FAULT_POSITION > 0
        ? { faultAtPosition: config.LOUPE_DECODER_TEST_FAULT_POSITION }
        : {}),
    },
    { stepTimeoutMs: config.LOUPE_DECODER_STEP_TIMEOUT_MS },
  );
  // Without its engine thread the service cannot serve: NOT_SERVING, and exit to be restarted.
  const running: { server?: GrpcServer; service?: RunningService } = {};
  engine.onDeath = (death) =>
    void exitForDeadWorker(death, {
      logger,
      server: running.server,
      stop: running.service?.stop,
      threadEnded: engine.ended,
      stallSetting: 'LOUPE_DECODER_STEP_TIMEOUT_MS',
    });
  logger.info(
    {
      event: 'model_loaded',
      modelDir,
      modelId,
      executionProvider: config.LOUPE_DECODER_EXECUTION_PROVIDER,
      ms: Math.round(performance.now() - loadStarted),
      ...engine.info,
      activations: config.LOUPE_DECODER_QUANT_ACTIVATIONS,
    },
    `text model ${modelId} loaded: ${engine.info.weightFormat}, ${(engine.info.weightBytes / 2 ** 20).toFixed(1)} MiB of weights`,
  );
  if (
    engine.info.weightFormat.startsWith('gptq-8bit') &&
    config.LOUPE_DECODER_QUANT_ACTIVATIONS === 'float' &&
    config.LOUPE_DECODER_EXECUTION_PROVIDER === 'cpu'
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
      host: config.LOUPE_DECODER_HOST,
      port: config.LOUPE_DECODER_PORT,
      maxMessageBytes: config.LOUPE_GRPC_MAX_MESSAGE_BYTES,
      reflection: config.LOUPE_GRPC_REFLECTION,
      maxConcurrentStreams: config.LOUPE_GRPC_MAX_CONCURRENT_STREAMS,
      token: internalToken(config),
      ...transport,
      reflectionProtos: ['loupe/v1/decoder.proto'],
      defaultDeadlineMs: config.LOUPE_DECODER_DEFAULT_DEADLINE_MS,
    },
    metrics: { host: config.LOUPE_DECODER_HOST, port: config.LOUPE_DECODER_METRICS_PORT },
    shutdownGraceMs: config.LOUPE_SHUTDOWN_GRACE_MS,
    register: (server) => {
      running.server = server;
      registerDecoder(server, {
        modelId,
        engine,
        limits: {
          maxContext: config.LOUPE_DECODER_MAX_CONTEXT,
          maxNewTokens: config.LOUPE_DECODER_MAX_NEW_TOKENS,
        },
        metrics,
      });
    },
    close: () => engine.close(),
  });
}

runMain(NAME, main);
