// Decoder.Generate for the tests that run the decoder process: a request with the defaults
// filled in, and the stream read to its end.
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import type {
  DecoderClient,
  GenerateFinished,
  GenerateRequest,
  GenerateResponse,
  GeneratedToken,
} from '../../proto/gen/loupe/v1/decoder.js';

/** A greedy request for `promptTokenIds`, no images, 32 new tokens at most; `extra` overrides. */
export function generateRequest(
  promptTokenIds: number[],
  extra: Partial<GenerateRequest> = {},
): GenerateRequest {
  return {
    promptTokenIds,
    images: [],
    sampling: { temperature: 0 },
    stopTokenIds: [],
    logitBias: {},
    responseFormat: undefined,
    maxNewTokens: 32,
    logprobs: false,
    topLogprobs: 0,
    ...extra,
  };
}

export interface Generated {
  tokens: GeneratedToken[];
  finished: GenerateFinished | undefined;
  /** How the stream failed, if it did. */
  error?: ServiceError;
}

/** Runs Generate to its end (never rejects: a failure is `error`); `onToken` may cancel the call. */
export function generate(
  client: DecoderClient,
  request: GenerateRequest,
  {
    deadlineMs = 60_000,
    onToken,
  }: { deadlineMs?: number; onToken?: (n: number, cancel: () => void) => void } = {},
): Promise<Generated> {
  return new Promise((resolve) => {
    const stream = client.generate(request, new Metadata(), {
      deadline: new Date(Date.now() + deadlineMs),
    });
    const result: Generated = { tokens: [], finished: undefined };
    stream.on('data', (m: GenerateResponse) => {
      if (m.event?.$case === 'token') {
        result.tokens.push(m.event.value);
        onToken?.(result.tokens.length, () => stream.cancel());
      } else if (m.event?.$case === 'finished') result.finished = m.event.value;
    });
    stream.on('error', (error: ServiceError) => resolve({ ...result, error }));
    stream.on('end', () => resolve(result));
  });
}

/** The tokens of a Generate that must succeed (rejects with its error otherwise). */
export async function generateTokens(
  client: DecoderClient,
  request: GenerateRequest,
): Promise<GeneratedToken[]> {
  const r = await generate(client, request);
  if (r.error) throw r.error;
  return r.tokens;
}
