// bench:decoder's access to a real decoder process: start one from dist/ on ephemeral ports
// with the bench's settings, and time Generate calls over gRPC (time to first token, tokens,
// the tokens themselves).
import { credentials, Metadata } from '@grpc/grpc-js';
import {
  DecoderClient,
  GenerateRequest,
  type GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import { clientChannelOptions } from '../../services/runtime/index.js';
import { startBenchService } from '../lib/bench-service.js';

export interface DecoderProcess {
  client: DecoderClient;
  stop(): Promise<void>;
}

/** A decoder on `modelDir` with `env` over the defaults (LOUPE_DECODER_* variables). */
export async function startDecoder(
  modelDir: string,
  env: Record<string, string>,
): Promise<DecoderProcess> {
  const service = await startBenchService('decoder', {
    LOUPE_MODEL_DIR: modelDir,
    LOUPE_DECODER_HOST: '127.0.0.1',
    LOUPE_DECODER_PORT: '0',
    LOUPE_DECODER_METRICS_PORT: '0',
    ...env,
  });
  const client = new DecoderClient(
    `127.0.0.1:${Number(service.ready.grpcPort)}`,
    credentials.createInsecure(),
    clientChannelOptions(64 << 20),
  );
  return {
    client,
    stop: async () => {
      client.close();
      await service.stop();
    },
  };
}

/** A Generate request with the bench's defaults (greedy, no logprobs), whatever fields it has. */
export function benchRequest(fields: Partial<GenerateRequest>): GenerateRequest {
  return {
    ...GenerateRequest.fromPartial({ sampling: { temperature: 0 } }),
    ...fields,
  };
}

export interface Generated {
  ids: number[];
  /** From the call to its first token, ms. */
  ttftMs: number;
}

/** One Generate call, to its end. */
export function generate(client: DecoderClient, request: GenerateRequest): Promise<Generated> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let ttftMs = 0;
    const ids: number[] = [];
    const stream = client.generate(request, new Metadata(), {
      deadline: new Date(Date.now() + 600_000),
    });
    stream.on('data', (m: GenerateResponse) => {
      if (m.event?.$case !== 'token') return;
      if (ids.length === 0) ttftMs = performance.now() - started;
      ids.push(m.event.value.id);
    });
    stream.on('error', reject);
    stream.on('end', () => resolve({ ids, ttftMs }));
  });
}
