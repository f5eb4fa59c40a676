// Starts the gateway: `node dist/services/gateway/main.js`.
import { basename, resolve } from 'node:path';
import {
  loadChatTemplate,
  loadImageProcessorConfig,
  loadTokenizer,
  openCheckpoint,
} from '../model/index.js';
import {
  ConfigError,
  createRegistry,
  grpcTlsConfig,
  internalToken,
  runService,
} from '../runtime/index.js';
import { createGateway } from './app.js';
import { PromptPool } from './prompt-pool.js';
import { apiKeys, loadGatewayConfig } from './config.js';
import { parseEndpoints } from './discovery.js';
import { Stages } from './stages.js';

const NAME = 'gateway';
const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

runService({
  name: NAME,
  serves: 'http',
  loadConfig: loadGatewayConfig,
  async start({ config, logger, tracer }) {
    let keys: string[];
    try {
      keys = apiKeys(config);
    } catch (error) {
      throw new ConfigError(`LOUPE_GATEWAY_API_KEYS_FILE: ${(error as Error).message}`);
    }
    if (keys.length === 0 && !LOOPBACK.has(config.host)) {
      throw new ConfigError(
        `no API keys are configured (LOUPE_GATEWAY_API_KEYS or LOUPE_GATEWAY_API_KEYS_FILE), so the gateway only listens on loopback; LOUPE_GATEWAY_HOST is ${config.host}`,
      );
    }
    if (keys.length === 0)
      logger.warn('no API keys configured: serving without authentication, on loopback only');
    const modelDir = resolve(config.modelDir);
    const checkpoint = openCheckpoint(modelDir);
    const modelId = config.modelId ?? basename(modelDir);
    const registry = createRegistry(NAME, modelId);
    let sources;
    try {
      sources = {
        preprocessor: parseEndpoints(config.endpoints.preprocessor),
        encoder: parseEndpoints(config.endpoints.encoder),
        decoder: parseEndpoints(config.endpoints.decoder),
      };
    } catch (error) {
      throw new ConfigError(`invalid configuration: ${(error as Error).message}`);
    }
    const token = internalToken(config.grpc);
    const tls = grpcTlsConfig(config.grpc.tls);
    const stages = new Stages(sources, config.grpc.maxMessageBytes, {
      logger,
      ...(token === undefined ? {} : { token }),
      ...(tls === undefined ? {} : { tls }),
    });
    const prompts = new PromptPool({ modelDir, threads: config.promptThreads });
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
      tracer,
      prompts,
    });
    return {
      registry,
      fetch: app.fetch,
      inFlight,
      drain,
      close: async () => {
        close();
        stages.close();
        await prompts.close();
      },
      ready: { path: '/v1/chat/completions', modelId },
    };
  },
});
