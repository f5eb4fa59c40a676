// The Decoder gRPC service: checks a request, hands it to the engine thread and streams the
// tokens back. Cancelling the call (or its deadline passing) aborts the sequence, which frees
// its KV slot within one step.
import { randomBytes } from 'node:crypto';
import {
  FinishReason,
  type DecoderInfo,
  type DecoderLoad,
  type GenerateRequest,
  type GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { float16ToFloat32 } from '../model/index.js';
import {
  invalidArgument,
  resourceExhausted,
  type CallContext,
  type GrpcServer,
  failureReason,
} from '../runtime/index.js';
import type { EngineRequest } from './engine.js';
import { EngineRejectedError, type EngineClient, type RequestEvent } from './engine-client.js';
import type { DecoderMetrics } from './metrics.js';
import { DecoderService } from '../../proto/gen/loupe/v1/decoder.js';

export interface DecoderLimits {
  maxContext: number;
  maxNewTokens: number;
}

export interface DecoderHandlersOptions {
  modelId: string;
  engine: EngineClient;
  limits: DecoderLimits;
  metrics: DecoderMetrics;
}

const MAX_TOP_LOGPROBS = 20;

function inRange(value: number, field: string, min: number, max: number, open = ''): void {
  const low = open.includes('(') ? value > min : value >= min;
  const high = open.includes(')') ? value < max : value <= max;
  if (!Number.isFinite(value) || !low || !high) {
    const interval = `${open.includes('(') ? '(' : '['}${min}, ${max}${open.includes(')') ? ')' : ']'}`;
    throw invalidArgument(`\`${field}\` must be in ${interval}, got ${value}`, 'bad_sampling');
  }
}

/** The engine's form of a request, every field checked; throws INVALID_ARGUMENT naming it. */
export function engineRequest(
  id: string,
  request: GenerateRequest,
  { vocabSize, hiddenSize, imageTokenId }: EngineClient['info'],
  { maxContext, maxNewTokens }: DecoderLimits,
): EngineRequest {
  const prompt = request.promptTokenIds;
  if (prompt.length === 0) throw invalidArgument('`prompt_token_ids` is empty', 'empty_prompt');
  const badToken = prompt.findIndex((t) => t >= vocabSize);
  if (badToken >= 0) {
    throw invalidArgument(
      `\`prompt_token_ids[${badToken}]\` is ${prompt[badToken]}, outside the vocabulary of ${vocabSize}`,
      'bad_token',
    );
  }
  if (prompt.length >= maxContext) {
    throw invalidArgument(
      `the prompt has ${prompt.length} tokens; the maximum context is ${maxContext} tokens, prompt and generated together`,
      'context_length_exceeded',
    );
  }
  if (request.maxNewTokens > maxNewTokens) {
    throw invalidArgument(
      `\`max_new_tokens\` must be <= ${maxNewTokens}, got ${request.maxNewTokens}`,
      'too_long',
    );
  }
  // 0 (unset): as many as fit.
  const maxNew = request.maxNewTokens || Math.min(maxNewTokens, maxContext - prompt.length);
  if (prompt.length + maxNew > maxContext) {
    throw invalidArgument(
      `the prompt (${prompt.length} tokens) + \`max_new_tokens\` (${maxNew}) exceed the maximum context of ${maxContext} tokens`,
      'context_length_exceeded',
    );
  }
  const badStop = request.stopTokenIds.findIndex((t) => t >= vocabSize);
  if (badStop >= 0) {
    throw invalidArgument(
      `\`stop_token_ids[${badStop}]\` is ${request.stopTokenIds[badStop]}, outside the vocabulary of ${vocabSize}`,
      'bad_token',
    );
  }
  if (request.topLogprobs > MAX_TOP_LOGPROBS) {
    throw invalidArgument(
      `\`top_logprobs\` must be <= ${MAX_TOP_LOGPROBS}, got ${request.topLogprobs}`,
      'bad_logprobs',
    );
  }
  if (request.topLogprobs > 0 && !request.logprobs) {
    throw invalidArgument('`top_logprobs` needs `logprobs` to be true', 'bad_logprobs');
  }

  const s = request.sampling;
  const temperature = s?.temperature ?? 0;
  inRange(temperature, 'sampling.temperature', 0, 100);
  const topP = s?.topP ?? 1;
  inRange(topP, 'sampling.top_p', 0, 1, '(');
  const topK = s?.topK ?? 0;
  inRange(topK, 'sampling.top_k', 0, vocabSize);
  const minP = s?.minP ?? 0;
  inRange(minP, 'sampling.min_p', 0, 1);
  const repetitionPenalty = s?.repetitionPenalty ?? 1;
  inRange(repetitionPenalty, 'sampling.repetition_penalty', 0, 100, '(');
  const presencePenalty = s?.presencePenalty ?? 0;
  inRange(presencePenalty, 'sampling.presence_penalty', -2, 2);
  const frequencyPenalty = s?.frequencyPenalty ?? 0;
  inRange(frequencyPenalty, 'sampling.frequency_penalty', -2, 2);
  const seed = s?.seed !== undefined ? BigInt(s.seed) : randomBytes(8).readBigUInt64LE(0);

  const { imageRows, imageDtype } = imageEmbeddings(request, prompt, {
    hiddenSize,
    imageTokenId,
  });
  return {
    id,
    promptIds: [...prompt],
    imageRows,
    imageDtype,
    sampling: {
      temperature,
      topP,
      topK,
      minP,
      repetitionPenalty,
      presencePenalty,
      frequencyPenalty,
    },
    seed,
    stopTokenIds: [...request.stopTokenIds],
    maxNewTokens: maxNew,
    logprobs: request.logprobs,
    topLogprobs: request.topLogprobs,
  };
}

/**
 * All image rows in prompt order as one buffer (float16 when every image is float16, else
 * float32), after checking that they cover exactly the prompt's `<image>` tokens.
 */
function imageEmbeddings(
  request: GenerateRequest,
  prompt: readonly number[],
  { hiddenSize, imageTokenId }: { hiddenSize: number; imageTokenId: number },
): { imageRows: Uint8Array; imageDtype: 'float16' | 'float32' } {
  const imageTokens = prompt.reduce((n, t) => n + (t === imageTokenId ? 1 : 0), 0);
  let previous = -1;
  let rows = 0;
  const parts: Array<{ data: Uint8Array; dtype: 'float16' | 'float32' }> = [];
  request.images.forEach((image, i) => {
    const field = `images[${i}]`;
    const t = image.embeddings;
    if (t === undefined) throw invalidArgument(`\`${field}.embeddings\` is missing`, 'bad_image');
    const dtype =
      t.dtype === Dtype.DTYPE_FLOAT16
        ? 'float16'
        : t.dtype === Dtype.DTYPE_FLOAT32
          ? 'float32'
          : undefined;
    if (dtype === undefined) {
      throw invalidArgument(
        `\`${field}.embeddings.dtype\` must be DTYPE_FLOAT16 or DTYPE_FLOAT32, got ${Dtype[t.dtype] ?? t.dtype}`,
        'bad_image',
      );
    }
    const shape = t.shape.map(Number);
    if (shape.length !== 2 || shape[1] !== hiddenSize) {
      throw invalidArgument(
        `\`${field}.embeddings.shape\` is [${shape.join(', ')}], expected [rows, ${hiddenSize}]`,
        'bad_image',
      );
    }
    const bytes = shape[0]! * hiddenSize * (dtype === 'float16' ? 2 : 4);
    if (t.data.byteLength !== bytes) {
      throw invalidArgument(
        `\`${field}.embeddings.data\` has ${t.data.byteLength} bytes; shape [${shape.join(', ')}] in ${dtype} needs ${bytes}`,
        'bad_image',
      );
    }
    if (image.positions.length !== shape[0]) {
      throw invalidArgument(
        `\`${field}.positions\` has ${image.positions.length} positions for ${shape[0]} embedding rows; they must be equal`,
        'bad_image',
      );
    }
    for (const [k, p] of image.positions.entries()) {
      if (p <= previous || p >= prompt.length || prompt[p] !== imageTokenId) {
        throw invalidArgument(
          `\`${field}.positions[${k}]\` is ${p}: positions must ascend across images and name <image> tokens (id ${imageTokenId}) of the prompt`,
          'bad_image',
        );
      }
      previous = p;
    }
    rows += shape[0]!;
    parts.push({ data: t.data, dtype });
  });
  if (rows !== imageTokens) {
    throw invalidArgument(
      `the prompt has ${imageTokens} <image> tokens but ${rows} image embedding rows were given; they must be equal`,
      'bad_image',
    );
  }
  if (parts.every((p) => p.dtype === 'float16')) {
    return {
      imageRows: new Uint8Array(Buffer.concat(parts.map((p) => p.data))),
      imageDtype: 'float16',
    };
  }
  const out = new Float32Array(rows * hiddenSize);
  let at = 0;
  for (const { data, dtype } of parts) {
    const values =
      dtype === 'float32'
        ? new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))
        : Float32Array.from(
            new Uint16Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)),
            (bits) => float16ToFloat32(bits),
          );
    out.set(values, at);
    at += values.length;
  }
  return { imageRows: new Uint8Array(out.buffer), imageDtype: 'float32' };
}

const FINISH: Record<'stop' | 'length', FinishReason> = {
  stop: FinishReason.FINISH_REASON_STOP,
  length: FinishReason.FINISH_REASON_LENGTH,
};

/** A request's events as an async stream that ends when `signal` aborts. */
class EventQueue {
  readonly #events: RequestEvent[] = [];
  #wake: (() => void) | undefined;

  constructor(private readonly signal: AbortSignal) {
    signal.addEventListener('abort', () => this.#wake?.(), { once: true });
  }

  push = (event: RequestEvent): void => {
    this.#events.push(event);
    this.#wake?.();
  };

  async next(): Promise<RequestEvent> {
    while (this.#events.length === 0) {
      if (this.signal.aborted) throw this.signal.reason;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
    return this.#events.shift()!;
  }
}

export function registerDecoder(server: GrpcServer, options: DecoderHandlersOptions): void {
  const { modelId, engine, limits, metrics } = options;
  let nextId = 0;

  const generate = async (
    request: GenerateRequest,
    ctx: CallContext,
    send: (message: GenerateResponse) => Promise<void>,
  ): Promise<void> => {
    const received = performance.now();
    const id = `${ctx.requestId}/${nextId++}`;
    let finished = false;
    try {
      const engineReq = engineRequest(id, request, engine.info, limits);
      const events = new EventQueue(ctx.signal);
      try {
        await engine.add(engineReq, events.push);
      } catch (error) {
        if (error instanceof EngineRejectedError) {
          throw error.reason === 'queue_full'
            ? resourceExhausted(error.message, 'queue_full')
            : invalidArgument(error.message, 'rejected');
        }
        throw error;
      }
      metrics.promptTokens.inc(engineReq.promptIds.length);
      const onAbort = () => engine.abort(id);
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      try {
        let last = received;
        for (;;) {
          const event = await events.next();
          if (event.kind === 'error') {
            ctx.logger.error(
              { reason: event.error.reason, err: event.error.message },
              'generation failed',
            );
            throw event.error;
          }
          const t = event.event;
          const now = performance.now();
          if (t.index === 0) metrics.timeToFirstToken.observe((now - received) / 1000);
          else metrics.interTokenLatency.observe((now - last) / 1000);
          last = now;
          metrics.generationTokens.inc();
          await send({
            event: {
              $case: 'token',
              value: {
                id: t.token,
                index: t.index,
                logprob: t.logprob,
                topLogprobs: t.top.map(({ id: token, logprob }) => ({ id: token, logprob })),
              },
            },
          });
          if (t.finished) {
            finished = true;
            metrics.e2eLatency.observe((now - received) / 1000);
            metrics.requestSuccess.inc({ finished_reason: t.finished });
            await send({
              event: {
                $case: 'finished',
                value: {
                  reason: FINISH[t.finished],
                  promptTokens: engineReq.promptIds.length,
                  generatedTokens: t.index + 1,
                  timings: {
                    queueSeconds: t.timings!.queue,
                    prefillSeconds: t.timings!.prefill,
                    decodeSeconds: t.timings!.decode,
                  },
                },
              },
            });
            return;
          }
        }
      } finally {
        ctx.signal.removeEventListener('abort', onAbort);
        if (!finished) engine.abort(id);
      }
    } catch (error) {
      if (ctx.signal.aborted) metrics.requestSuccess.inc({ finished_reason: 'cancelled' });
      else metrics.failures.inc({ reason: failureReason(error) });
      throw error;
    }
  };

  const load = async (): Promise<DecoderLoad> => ({
    waiting: engine.load.waiting,
    running: engine.load.running,
    kvCacheUsage: engine.load.kvCacheUsage,
  });

  const info = async (): Promise<DecoderInfo> => ({
    modelId,
    vocabSize: engine.info.vocabSize,
    maxContext: limits.maxContext,
    maxNewTokens: limits.maxNewTokens,
    hiddenSize: engine.info.hiddenSize,
    imageTokenId: engine.info.imageTokenId,
    eosTokenIds: engine.info.eosTokenIds,
    weightFormat: engine.info.weightFormat,
    weightBytes: engine.info.weightBytes,
    load: await load(),
  });

  server.addService('loupe.v1.Decoder', DecoderService, {
    generate: server.serverStream('Generate', generate),
    info: server.unary('Info', info),
    load: server.unary('Load', load),
  });
}
