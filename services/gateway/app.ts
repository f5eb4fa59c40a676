// The public HTTP API (Hono): OpenAI chat completions with images, streamed or not, in front
// of the preprocessor, encoder and decoder. A chat completion goes through five steps, each
// in its own module (docs/gateway.md):
//
//   admit (admission.ts)  rates, requests in flight, memory budget — before the body is read
//   parse (request.ts)    the body → a ValidChatRequest with every limit applied
//   plan (plan.ts)        template + tokenize, context check — before any image work
//   execute (execute.ts)  images: fetch → preprocess → encode (or cache); decoder Generate
//   render (render.ts)    chat.completion JSON, or chunks over SSE
//
// This file wires them to routes, with authentication, request ids, the access log, metrics
// and the error table (errors of the stages: stage-errors.ts).
import { createHash, randomUUID } from 'node:crypto';
import {
  context as otelContext,
  propagation,
  SpanStatusCode,
  type TextMapGetter,
  type Tracer,
} from '@opentelemetry/api';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { streamSSE } from 'hono/streaming';
import type { ChatTemplate, ImageProcessorConfig, TextTokenizer } from '../model/index.js';
import { Counter, Gauge, Histogram, type Logger, type Registry } from '../runtime/index.js';
import { AllowList } from './address-policy.js';
import { Admission, type Ticket } from './admission.js';
import { ApiError, clip, invalid } from './api-error.js';
import type { GatewayConfig } from './config.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { deferredStream, Generation, generateRequest, ImageEmbedder } from './execute.js';
import { ImageSourceError, type Resolver } from './image-source.js';
import { defaultMemoryBudget } from './memory-budget.js';
import { openApiDocument } from './openai.js';
import { Planner } from './plan.js';
import type { PromptPool } from './prompt-pool.js';
import { Renderer, type TokenLogprob } from './render.js';
import { parseChatRequest, type RequestRules, type ValidChatRequest } from './request.js';
import {
  StageError,
  type CallContext,
  type GenerationStream,
  type StageClient,
} from './stage-client.js';
import { stageFailure } from './stage-errors.js';
import { StageHealth } from './stage-health.js';

export interface GatewayOptions {
  config: GatewayConfig;
  modelId: string;
  tokenizer: TextTokenizer;
  template: ChatTemplate;
  processor: ImageProcessorConfig;
  imageTokenId: number;
  /** The model's max_position_embeddings: the defaults of the prompt caps follow it. */
  maxPositions: number;
  /** The stages: over gRPC (stages.ts), or scripted in the in-process tests. */
  stages: StageClient;
  keys: readonly string[];
  registry: Registry;
  logger: Logger;
  tracer: Tracer;
  /** Name resolution for image URLs (tests inject one). */
  resolve?: Resolver;
  /** Threads for long prompts; without it every prompt is built on the event loop. */
  prompts?: PromptPool;
}

interface Env {
  Variables: {
    requestId: string;
    /** A chat completion's admission, and whether the handler has taken over its release. */
    admission: { ticket: Ticket; owned: boolean };
  };
}

export function createGateway(o: GatewayOptions) {
  const { config, modelId, tokenizer, stages, logger, tracer } = o;
  const admission = new Admission({
    keys: o.keys,
    requestsPerMinute: config.requestsPerMinute,
    tokensPerMinute: config.tokensPerMinute,
    authFailuresPerMinute: config.authFailuresPerMinute,
    maxInFlight: config.maxInFlight,
    maxInFlightPerClient: config.maxInFlightPerKey,
    maxBodyBytes: config.maxBodyBytes,
    maxImageBytes: config.maxImageBytes,
    memoryBudgetBytes: config.memoryBudgetBytes || defaultMemoryBudget(),
  });
  const health = new StageHealth(stages);
  void health.poll();
  let draining = false;
  const metrics = gatewayMetrics(o.registry, () => admission.inFlight, health);
  const rules: RequestRules = {
    modelId,
    maxMessages: config.maxMessages || Math.ceil(o.maxPositions / 2),
    maxPromptChars: config.maxPromptChars || 16 * o.maxPositions,
    maxImages: config.maxImages,
    maxChoices: config.maxChoices,
    splitByDefault: o.processor.doImageSplitting,
    tokenizer,
  };
  const planner = new Planner({
    tokenizer,
    template: o.template,
    imageSeqLen: o.processor.imageSeqLen,
    stages,
    prompts: o.prompts,
    onPrompt: (where) => metrics.prompts.inc({ where }),
  });
  const embedder = new ImageEmbedder({
    stages,
    fetch: {
      maxBytes: config.maxImageBytes,
      timeoutMs: config.fetch.timeoutMs,
      connectTimeoutMs: config.fetch.connectTimeoutMs,
      maxRedirects: config.fetch.maxRedirects,
      allow: new AllowList(config.fetch.allow),
      ...(o.resolve ? { resolve: o.resolve } : {}),
    },
    onImage: (source) => metrics.images.inc({ source }),
  });
  const clientAddress = (c: Context) =>
    (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket
      ?.remoteAddress ?? 'local';

  const app = new Hono<Env>();

  // Every response carries the request id (the client's x-request-id when it is printable
  // ASCII of at most 128 characters, else a new one), and every request gets one access-log
  // line: method, route, status, latency to the response head, and the API key's id (a
  // hash prefix; never the key).
  app.use('*', async (c, next) => {
    const started = performance.now();
    const given = c.req.header('x-request-id');
    const requestId = given && /^[\x21-\x7e]{1,128}$/.test(given) ? given : randomUUID();
    c.set('requestId', requestId);
    await next();
    c.res.headers.set('x-request-id', requestId);
    const bearer = bearerKey(c.req.header('authorization'));
    logger.info(
      {
        event: 'access',
        requestId,
        method: c.req.method,
        route: c.req.routePath,
        status: c.res.status,
        ms: Math.round(performance.now() - started),
        keyId: admission.keys.enabled && bearer ? sha256(bearer).slice(0, 12) : null,
      },
      'request',
    );
  });

  app.onError((error, c) => {
    const api =
      error instanceof ApiError
        ? error
        : error instanceof StageError
          ? stageFailure(error, logger)
          : error instanceof ImageSourceError
            ? invalid(error.message, error.field ?? null, error.reason)
            : undefined;
    if (api) return fail(c, api);
    logger.error({ err: error }, 'request failed');
    return fail(c, new ApiError({ status: 500, message: 'internal error' }));
  });

  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  // Ready while this process can serve (not draining); the stages' health is in the body,
  // at most a second old and never waited on for more than half a second.
  app.get('/readyz', async (c) => {
    const ready = !draining;
    return c.json({ ready, stages: await health.current() }, ready ? 200 : 503);
  });
  app.get('/openapi.json', (c) => c.json(openApiDocument(modelId)));

  // Browsers: a web page must not drive the API. The Host must be one this gateway serves
  // (DNS rebinding points a foreign name at 127.0.0.1) and an Origin, when a browser sends
  // one, must be allowed; chat bodies must be JSON, which no page can send cross-origin
  // without a CORS preflight, and the gateway answers none.
  const allowedHosts = new Set(config.allowedHosts.map((h) => h.toLowerCase()));
  const hostAllowed = (host: string | undefined) => {
    const name = hostName(host);
    if (allowedHosts.size > 0) return name !== undefined && allowedHosts.has(name);
    if (admission.keys.enabled) return true;
    return name !== undefined && (LOOPBACK_NAMES.has(name) || name.endsWith('.localhost'));
  };
  const allowedOrigins = new Set(config.allowedOrigins);
  app.use('/v1/*', async (c, next) => {
    if (!hostAllowed(c.req.header('host'))) {
      return fail(
        c,
        new ApiError({
          status: 403,
          message: `this gateway does not answer for the host \`${clip(c.req.header('host') ?? '')}\` (LOUPE_GATEWAY_ALLOWED_HOSTS)`,
          code: 'host_not_allowed',
        }),
      );
    }
    const origin = c.req.header('origin');
    if (origin !== undefined && !allowedOrigins.has(origin)) {
      return fail(
        c,
        new ApiError({
          status: 403,
          message: `requests from the origin \`${clip(origin)}\` are not allowed (LOUPE_GATEWAY_ALLOWED_ORIGINS)`,
          code: 'origin_not_allowed',
        }),
      );
    }
    return next();
  });

  app.use('/v1/*', async (c, next) => {
    const refused = admission.authenticate(
      bearerKey(c.req.header('authorization')),
      clientAddress(c),
    );
    return refused ? fail(c, refused) : next();
  });

  app.get('/v1/models', (c) =>
    c.json({
      object: 'list',
      data: [{ id: modelId, object: 'model', created: 0, owned_by: 'loupe' }],
    }),
  );

  // Admit, before the body is read (bodyLimit reads a chunked body whole before the handler
  // runs): the body's share of the memory budget is its declared size, or the body limit when
  // it comes chunked, so slow bodies cannot overshoot. The handler takes over the release
  // once it has the body; a request that ends before (a body over the limit, a client gone)
  // is released here.
  app.post('/v1/chat/completions', async (c, next) => {
    const type = c.req.header('content-type')?.split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      throw new ApiError({
        status: 415,
        message: `the body must be JSON (Content-Type: application/json), not ${clip(type ?? 'none')}`,
        code: 'unsupported_media_type',
      });
    }
    // Rates are per key (the normalized key the auth check accepted), or per client address
    // when no keys are configured.
    const client = admission.keys.enabled
      ? `key:${sha256(bearerKey(c.req.header('authorization')) ?? '')}`
      : `addr:${clientAddress(c)}`;
    const declared = Number(c.req.header('content-length'));
    const bodyBytes =
      Number.isSafeInteger(declared) && declared >= 0 && !c.req.header('transfer-encoding')
        ? Math.min(declared, config.maxBodyBytes)
        : config.maxBodyBytes;
    c.set('admission', { ticket: admission.admit(client, bodyBytes), owned: false });
    try {
      await next();
    } finally {
      const { ticket, owned } = c.get('admission');
      if (!owned) ticket.release();
    }
  });

  app.post(
    '/v1/chat/completions',
    bodyLimit({
      maxSize: config.maxBodyBytes,
      onError: (c) =>
        fail(
          c,
          new ApiError({
            status: 413,
            message: `the request body is over the limit of ${config.maxBodyBytes} bytes`,
            code: 'body_too_large',
          }),
        ),
    }),
    async (c) => {
      const started = performance.now();
      const { ticket } = c.get('admission');
      c.set('admission', { ticket, owned: true });
      let request: ValidChatRequest;
      try {
        let json: unknown;
        try {
          json = await c.req.json();
        } catch {
          throw invalid('the body is not valid JSON', null, 'invalid_json');
        }
        request = parseChatRequest(json, rules);
        ticket.reserveImages(request.fetches);
      } catch (error) {
        ticket.release();
        throw error;
      }
      ticket.reserveTokens(request.maxTokens * request.choices);

      const controller = new AbortController();
      const clientGone = () => controller.abort(new Error('the client disconnected'));
      c.req.raw.signal.addEventListener('abort', clientGone, { once: true });
      if (c.req.raw.signal.aborted) clientGone();
      const requestId = c.get('requestId');
      const ctx: CallContext = {
        signal: controller.signal,
        requestId,
        deadline: Date.now() + config.requestTimeoutMs,
      };
      const done = () => {
        ticket.release();
        c.req.raw.signal.removeEventListener('abort', clientGone);
        metrics.duration.observe((performance.now() - started) / 1000);
      };
      const decoderError = (error: unknown) =>
        error instanceof ApiError ? error : stageFailure(new StageError('decoder', error as never));

      // A caller's W3C traceparent makes this request a part of its trace.
      const parent = propagation.extract(otelContext.active(), c.req.raw.headers, headerGetter);
      return tracer.startActiveSpan('POST /v1/chat/completions', {}, parent, async (span) => {
        span.setAttribute('loupe.request_id', requestId);
        let handedOff = false;
        try {
          const ids = await planner.promptIds(request, ctx);
          const images = await embedder.embedAll(request.images, ctx);
          metrics.promptTokens.inc(ids.length);
          ticket.useTokens(ids.length);

          const render = new Renderer(requestId, modelId, tokenizer);
          const generation = (stream: GenerationStream) =>
            new Generation<TokenLogprob>(
              stream,
              new IncrementalDetokenizer(tokenizer, request.stop),
              request.logprobs ? render.logprob : undefined,
            );
          const firstChoice = generation(
            stages.generate(generateRequest(request, ids, images, o.imageTokenId), ctx),
          );
          // Further choices start once the first has its first token: by then the decoder has
          // cached the prompt's KV, which they reuse (its prefix cache) instead of computing it.
          const generations = [
            firstChoice,
            ...Array.from({ length: request.choices - 1 }, (_, i) =>
              generation(
                deferredStream(firstChoice.firstToken, () =>
                  stages.generate(
                    generateRequest(request, ids, images, o.imageTokenId, i + 1),
                    ctx,
                  ),
                ),
              ),
            ),
          ];
          const completionTokens = () => generations.reduce((n, g) => n + g.completionTokens, 0);
          const usage = () => ({
            prompt_tokens: ids.length,
            completion_tokens: completionTokens(),
            total_tokens: ids.length + completionTokens(),
          });
          let accounted = false;
          const account = () => {
            if (accounted) return;
            accounted = true;
            metrics.completionTokens.inc(completionTokens());
            ticket.useTokens(ids.length + completionTokens());
          };

          if (!request.stream) {
            let answer;
            try {
              answer = await render.completion(generations, request.logprobs, usage);
            } catch (error) {
              throw controller.signal.aborted ? error : decoderError(error);
            }
            account();
            metrics.requests.inc({ route: 'chat', status: '200' });
            return c.json(answer);
          }

          // The response (its status and headers) waits for the first token: what the client
          // times as the first byte is the first token, and a decoder that refuses the request
          // (a full queue, a context overflow) gets its own HTTP status, not an error event.
          const chunks = render.chunks(generations, request.includeUsage ? usage : undefined);
          let first: IteratorResult<string>;
          try {
            first = await chunks.next();
          } catch (error) {
            throw controller.signal.aborted ? error : decoderError(error);
          }
          handedOff = true;
          return streamSSE(c, async (sse) => {
            sse.onAbort(() => controller.abort(new Error('the client disconnected')));
            try {
              // A client that stops reading holds a write; past the timeout, the stream ends
              // and its decoder work is cancelled.
              const write = (data: string) =>
                withTimeout(sse.writeSSE({ data }), config.streamWriteTimeoutMs, () => {
                  metrics.streamTimeouts.inc();
                  controller.abort(new Error('the client stopped reading'));
                  sse.abort();
                });
              if (!first.done) await write(first.value);
              for await (const data of chunks) await write(data);
              await sse.writeSSE({ data: '[DONE]' });
              account();
              metrics.requests.inc({ route: 'chat', status: '200' });
            } catch (error) {
              if (!controller.signal.aborted)
                await sse.writeSSE({ data: JSON.stringify(decoderError(error).body()) });
              metrics.requests.inc({
                route: 'chat',
                status: controller.signal.aborted ? '499' : 'error',
              });
            } finally {
              account(); // what streamed before a failure or a disconnect counts too
              span.end();
              done();
            }
          });
        } catch (error) {
          span.recordException(error as Error);
          span.setStatus({ code: SpanStatusCode.ERROR });
          const status =
            error instanceof ApiError
              ? error.status
              : error instanceof StageError
                ? stageFailure(error, logger).status
                : 500;
          metrics.requests.inc({ route: 'chat', status: String(status) });
          throw error;
        } finally {
          if (!handedOff) {
            // Work still running for this request (other images of a failed one) stops.
            controller.abort(new Error('the request has ended'));
            span.end();
            done();
          }
        }
      });
    },
  );

  // Known paths answer other methods with 405 and the methods they take.
  const allowed: Record<string, string> = {
    '/v1/chat/completions': 'POST',
    '/v1/models': 'GET, HEAD',
    '/healthz': 'GET, HEAD',
    '/readyz': 'GET, HEAD',
    '/openapi.json': 'GET, HEAD',
  };
  for (const [path, methods] of Object.entries(allowed)) {
    app.all(path, (c) => {
      c.header('Allow', methods);
      return fail(
        c,
        new ApiError({
          status: 405,
          message: `${path} takes ${methods.replace(', HEAD', '')}, not ${c.req.method.slice(0, 16)}`,
          code: 'method_not_allowed',
        }),
      );
    });
  }

  app.notFound((c) =>
    fail(
      c,
      new ApiError({
        status: 404,
        message: `no route ${clip(c.req.method, 16)} ${clip(c.req.path)}`,
        code: 'not_found',
      }),
    ),
  );

  return {
    app,
    inFlight: () => admission.inFlight,
    /** From now on /readyz answers 503 (a SIGTERM): the endpoint leaves its Service. */
    drain: () => {
      draining = true;
    },
    close: () => health.close(),
  };
}

function fail(c: Context, error: ApiError) {
  if (error.retryAfter !== undefined) c.header('Retry-After', String(error.retryAfter));
  return c.json(error.body(), error.status);
}

function gatewayMetrics(registry: Registry, inFlight: () => number, health: StageHealth) {
  const registers = [registry];
  new Gauge({
    name: 'loupe_gateway_stage_up',
    help: 'Whether some endpoint of the stage answered its health check SERVING (1) or not (0).',
    labelNames: ['stage'],
    registers,
    collect() {
      for (const [stage, up] of Object.entries(health.last)) this.set({ stage }, up ? 1 : 0);
    },
  });
  new Gauge({
    name: 'loupe_gateway_requests_in_flight',
    help: 'Chat completions being handled.',
    registers,
    collect() {
      this.set(inFlight());
    },
  });
  return {
    requests: new Counter({
      name: 'loupe_gateway_requests_total',
      help: 'HTTP requests answered, by route and status.',
      labelNames: ['route', 'status'],
      registers,
    }),
    duration: new Histogram({
      name: 'loupe_gateway_request_seconds',
      help: 'Chat completion time, seconds (streams: to the last chunk).',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    }),
    images: new Counter({
      name: 'loupe_gateway_images_total',
      help: 'Images in requests, by how their embeddings were found (cache, computed).',
      labelNames: ['source'],
      registers,
    }),
    promptTokens: new Counter({
      name: 'loupe_gateway_prompt_tokens_total',
      help: 'Prompt tokens sent to the decoder.',
      registers,
    }),
    prompts: new Counter({
      name: 'loupe_gateway_prompts_total',
      help: 'Prompts templated and tokenized, by where: inline (event loop) or pool (threads).',
      labelNames: ['where'],
      registers,
    }),
    completionTokens: new Counter({
      name: 'loupe_gateway_completion_tokens_total',
      help: 'Tokens generated.',
      registers,
    }),
    streamTimeouts: new Counter({
      name: 'loupe_gateway_stream_write_timeouts_total',
      help: 'Streams ended because their client did not take a chunk in time.',
      registers,
    }),
  };
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '::1']);

/** The name of a Host header, without its port or IPv6 brackets, lower-cased. */
function hostName(host: string | undefined): string | undefined {
  if (!host) return undefined;
  const h = host.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(1, h.indexOf(']'));
  return h.split(':')[0];
}

/**
 * `promise`, or after `ms` without it settling, `onTimeout()` and a rejection: the caller
 * stops waiting on a write that a client will never take.
 */
async function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          onTimeout();
          reject(new Error(`a write waited ${ms} ms on the client`));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** The key of an `Authorization: Bearer <key>` header (the scheme in any case), trimmed. */
function bearerKey(header: string | undefined): string | undefined {
  const match = header === undefined ? null : /^bearer\s+(.*)$/i.exec(header.trim());
  return match ? match[1]!.trim() : undefined;
}

/** Reads trace headers (traceparent, tracestate) from a fetch Headers object. */
const headerGetter: TextMapGetter<Headers> = {
  keys: (headers) => [...headers.keys()],
  get: (headers, key) => headers.get(key) ?? undefined,
};
