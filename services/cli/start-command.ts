// `loupe start` (and `npm start`): the local stack, each service its own process on loopback.
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { writeTinyModel } from '../model/index.js';
import { packageRoot } from '../runtime/index.js';
import { DEFAULT_RESTART, Supervisor, type ChildSpec, type ReadyInfo } from './supervisor.js';

/** A stage restarted after a crash listens where the first one did (the gateway points there). */
const samePorts =
  (prefix: string) =>
  (ready: ReadyInfo): Record<string, string> => ({
    [`LOUPE_${prefix}_PORT`]: String(ready.grpcPort ?? ready.httpPort),
    [`LOUPE_${prefix}_METRICS_PORT`]: String(ready.metricsPort),
  });

/**
 * The checkpoint the stack serves: LOUPE_MODEL_DIR, or a tiny random one made on first use
 * under .loupe/models/ (so the stack runs on a fresh clone with nothing downloaded).
 */
function modelDir(): string {
  if (process.env.LOUPE_MODEL_DIR) return process.env.LOUPE_MODEL_DIR;
  const dir = join(packageRoot(), '.loupe', 'models', 'tiny-seed0');
  if (!existsSync(join(dir, 'config.json'))) {
    process.stdout.write(
      `loupe: LOUPE_MODEL_DIR is unset; writing a tiny random checkpoint to ${dir}\n`,
    );
    writeTinyModel({ out: dir, seed: 0, size: 'tiny' });
  }
  return dir;
}

/** The services that exist, in start order, with their default local ports. */
function stackServices(model: string): ChildSpec[] {
  const dist = join(packageRoot(), 'dist', 'services');
  return [
    {
      name: 'preprocessor',
      script: join(dist, 'preprocessor', 'main.js'),
      restartEnv: samePorts('PREPROCESSOR'),
      env: {
        LOUPE_MODEL_DIR: model,
        // The local stack serves reflection, so grpcurl works against it (printed below).
        LOUPE_GRPC_REFLECTION: process.env.LOUPE_GRPC_REFLECTION ?? 'true',
        LOUPE_PREPROCESSOR_HOST: process.env.LOUPE_PREPROCESSOR_HOST ?? '127.0.0.1',
      },
    },
    {
      name: 'encoder',
      script: join(dist, 'encoder', 'main.js'),
      restartEnv: samePorts('ENCODER'),
      env: {
        LOUPE_MODEL_DIR: model,
        // The local stack serves reflection, so grpcurl works against it (printed below).
        LOUPE_GRPC_REFLECTION: process.env.LOUPE_GRPC_REFLECTION ?? 'true',
        LOUPE_ENCODER_HOST: process.env.LOUPE_ENCODER_HOST ?? '127.0.0.1',
      },
    },
    {
      name: 'decoder',
      script: join(dist, 'decoder', 'main.js'),
      restartEnv: samePorts('DECODER'),
      env: {
        LOUPE_MODEL_DIR: model,
        // The local stack serves reflection, so grpcurl works against it (printed below).
        LOUPE_GRPC_REFLECTION: process.env.LOUPE_GRPC_REFLECTION ?? 'true',
        LOUPE_DECODER_HOST: process.env.LOUPE_DECODER_HOST ?? '127.0.0.1',
      },
    },
  ];
}

export async function runStart(_args: string[]): Promise<number> {
  let exitCode = 0;
  let stopping: Promise<void> | undefined;
  const supervisor = new Supervisor({
    color: process.stdout.isTTY === true,
    // A stage that dies is started again (the gateway answers 503 with Retry-After meanwhile);
    // one that keeps dying stops the stack.
    restart: DEFAULT_RESTART,
    onGiveUp: (name, reason) => {
      process.stderr.write(`loupe start: ${name} ${reason}; stopping the stack\n`);
      exitCode = 1;
      void stop();
    },
  });
  let finished: () => void = () => {};
  const done = new Promise<void>((resolve) => (finished = resolve));
  const stop = () =>
    (stopping ??= supervisor.stopAll(30_000).then(() => {
      process.stdout.write('loupe: stopped\n');
      finished();
    }));
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());

  const started: string[] = [];
  const ports: Record<string, number> = {};
  let modelId: string;
  try {
    const model = modelDir();
    started.push(`  model         ${model}`);
    for (const spec of stackServices(model)) {
      const ready = await supervisor.start(spec);
      ports[spec.name] = Number(ready.grpcPort);
      started.push(
        `  ${spec.name.padEnd(13)} gRPC 127.0.0.1:${ready.grpcPort}   metrics http://127.0.0.1:${ready.metricsPort}/metrics`,
      );
    }
    // The gateway last, pointed at the ports the stages actually got.
    const gateway = await supervisor.start({
      name: 'gateway',
      script: join(packageRoot(), 'dist', 'services', 'gateway', 'main.js'),
      restartEnv: samePorts('GATEWAY'),
      env: {
        LOUPE_MODEL_DIR: model,
        LOUPE_GATEWAY_HOST: process.env.LOUPE_GATEWAY_HOST ?? '127.0.0.1',
        LOUPE_PREPROCESSOR_ENDPOINTS: `127.0.0.1:${ports.preprocessor}`,
        LOUPE_ENCODER_ENDPOINTS: `127.0.0.1:${ports.encoder}`,
        LOUPE_DECODER_ENDPOINTS: `127.0.0.1:${ports.decoder}`,
      },
    });
    ports.gateway = Number(gateway.httpPort);
    modelId = String((gateway as { modelId?: string }).modelId ?? basename(model));
    started.push(
      `  ${'gateway'.padEnd(13)} HTTP http://127.0.0.1:${gateway.httpPort}/v1   metrics http://127.0.0.1:${gateway.metricsPort}/metrics`,
    );
  } catch (error) {
    process.stderr.write(`loupe start: ${(error as Error).message}\n`);
    await stop();
    return 1;
  }
  process.stdout.write(
    [
      '',
      'Loupe is running (Ctrl-C stops everything):',
      ...started,
      '',
      'Try it:',
      `  curl http://127.0.0.1:${ports.gateway}/v1/chat/completions -H 'content-type: application/json' -d '{"model": "${modelId}", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello!"}]}'`,
      `  npx loupe chat --url http://127.0.0.1:${ports.gateway} --image test/fixtures/images/jpeg-1600x1067.jpg "What is in this picture?"`,
      '',
      'The stages directly (needs grpcurl):',
      `  grpcurl -plaintext -d "{\\"image\\": \\"$(base64 -w0 test/fixtures/images/jpeg-1600x1067.jpg)\\"}" 127.0.0.1:${ports.preprocessor} loupe.v1.Preprocessor/Preprocess | grep -v '"data"'`,
      `  grpcurl -plaintext 127.0.0.1:${ports.encoder} loupe.v1.Encoder/Info`,
      `  grpcurl -plaintext -d '{"prompt_token_ids": [1, 5, 9], "max_new_tokens": 8}' 127.0.0.1:${ports.decoder} loupe.v1.Decoder/Generate`,
      '',
    ].join('\n') + '\n',
  );
  await done;
  return exitCode;
}
