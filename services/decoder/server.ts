// The Decoder gRPC service: checks a request (request-validation.ts), hands it to the engine
// thread and streams the tokens back. Cancelling the call (or its deadline passing) aborts the
// sequence, which frees its KV slot within one step.
import {
  FinishReason as WireFinishReason,
  type DecoderInfo,
  type DecoderLoad,
  type GenerateRequest,
  type GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import {
  invalidArgument,
  queueFull,
  type HandlerContext,
  type GrpcServer,
  DecoderCodecService,
  failureReason,
} from '../runtime/index.js';
import { EngineRejectedError, type EngineClient, type RequestEvent } from './engine-client.js';
import type { DecoderMetrics } from './metrics.js';
import type { FinishReason } from './protocol.js';
import {
  engineRequest,
  maxGenerateRequestBytes,
  type DecoderLimits,
} from './request-validation.js';
import { engineLogitBias, engineResponseFormat } from './grammar/request-format.js';

export interface DecoderHandlersOptions {
  modelId: string;
  engine: EngineClient;
  limits: DecoderLimits;
  metrics: DecoderMetrics;
}

/** The engine's finish reasons on the wire (decoder.proto FinishReason), one for one. */
const WIRE_FINISH: Record<FinishReason, WireFinishReason> = {
  stop: WireFinishReason.FINISH_REASON_STOP,
  length: WireFinishReason.FINISH_REASON_LENGTH,
  cancelled: WireFinishReason.FINISH_REASON_CANCELLED,
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
    ctx: HandlerContext,
    send: (message: GenerateResponse) => Promise<void>,
  ): Promise<void> => {
    const received = performance.now();
    const id = `${ctx.requestId}/${nextId++}`;
    let finished = false;
    try {
      const engineReq = {
        ...engineRequest(id, request, engine.info, limits),
        // Checked here; the engine thread compiles the format (docs/structured-output.md).
        logitBias: engineLogitBias(request.logitBias, engine.info.vocabSize),
        responseFormat: engineResponseFormat(request.responseFormat),
      };
      const events = new EventQueue(ctx.signal);
      try {
        await engine.add(engineReq, events.push);
      } catch (error) {
        if (error instanceof EngineRejectedError) {
          throw error.reason === 'queue_full'
            ? queueFull(error.message)
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
                  reason: WIRE_FINISH[t.finished],
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

  server.addService(
    'loupe.v1.Decoder',
    DecoderCodecService,
    {
      generate: server.serverStream('Generate', generate),
      info: server.unary('Info', info),
      load: server.unary('Load', load),
    },
    {
      // A Generate request is at most a full context of prompt ids and image rows (and a
      // response_format): a larger one is refused from its length prefix, before it is kept.
      generate: { maxBytes: maxGenerateRequestBytes(engine.info, limits) },
      info: { maxBytes: 1024 },
      load: { maxBytes: 1024 },
    },
  );
}
