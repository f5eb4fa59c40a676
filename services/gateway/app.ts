// The public HTTP API (Hono): OpenAI chat completions with images, streamed or not, in front
// of the preprocessor, encoder and decoder.
//
//   request ─ auth ─ limits ─ validate ─┬─ image i: bytes ─ sha256 ─ encoder Lookup ─(miss)─
//                                        │            preprocessor Preprocess ─ encoder Encode
//                                        └─ chat template ─ expand <image> ─ tokenize
//                                 ─ decoder Generate (stream) ─ detokenize ─ SSE / JSON
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
import type { GenerateRequest, GenerateResponse } from '../../proto/gen/loupe/v1/decoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import {
  type ChatMessage as TemplateMessage,
  type ChatTemplate,
  type ImageProcessorConfig,
  type TextTokenizer,
} from '../model/index.js';
import {
  Counter,
  Gauge,
  Histogram,
  type Logger,
  type Registry,
  subImagesHash,
} from '../runtime/index.js';
import { AllowList } from './address-policy.js';
import type { GatewayConfig } from './config.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { ImageSourceError, loadImage, type Resolver } from './image-source.js';
import { ApiKeys, MinuteRate } from './limits.js';
import {
  ApiError,
  ChatCompletionRequest,
  fromZod,
  invalid,
  openApiDocument,
  refuseUnsupported,
} from './openai.js';
import { BODY_COST_FACTOR, defaultMemoryBudget, MemoryBudget } from './memory-budget.js';
import { promptIds } from './prompt.js';
import type { PromptPool } from './prompt-pool.js';
import { stageFailure } from './stage-errors.js';
import { StageError, type Stages } from './stages.js';

export interface GatewayOptions {
  config: GatewayConfig;
  modelId: string;
  tokenizer: TextTokenizer;
  template: ChatTemplate;
  processor: ImageProcessorConfig;
  imageTokenId: number;
  /** The model's max_position_embeddings: the defaults of the prompt caps follow it. */
  maxPositions: number;
  stages: Stages;
  keys: readonly string[];
  registry: Registry;
  logger: Logger;
  tracer: Tracer;
  /** Name resolution for image URLs (tests inject one). */
  resolve?: Resolver;
  /** Threads for long prompts; without it every prompt is built on the event loop. */
  prompts?: PromptPool;
}

/** Prompts with more characters of text than this are built in the prompt pool. */
export const INLINE_PROMPT_CHARS = 8192;

interface Prepared {
  request: GenerateRequest;
  promptTokens: number;
  stop: string[];
}

export function createGateway(o: GatewayOptions) {
  const { config, modelId, tokenizer, template, processor, stages, registry, logger, tracer } = o;
  const keys = new ApiKeys(o.keys);
  const requestRate = new MinuteRate(config.LOUPE_GATEWAY_REQUESTS_PER_MINUTE);
  const tokenRate = new MinuteRate(config.LOUPE_GATEWAY_TOKENS_PER_MINUTE);
  const authFailures = new MinuteRate(config.LOUPE_GATEWAY_AUTH_FAILURES_PER_MINUTE);
  const memory = new MemoryBudget(
    config.LOUPE_GATEWAY_MEMORY_BUDGET_BYTES || defaultMemoryBudget(),
  );
  /** Requests in flight per client (key, or address without keys). */
  const inFlightOf = new Map<string, number>();
  const clientAddress = (c: Context) =>
    (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket
      ?.remoteAddress ?? 'local';
  const fetchOptions = {
    maxBytes: config.LOUPE_GATEWAY_MAX_IMAGE_BYTES,
    timeoutMs: config.LOUPE_GATEWAY_FETCH_TIMEOUT_MS,
    connectTimeoutMs: config.LOUPE_GATEWAY_FETCH_CONNECT_TIMEOUT_MS,
    maxRedirects: config.LOUPE_GATEWAY_FETCH_MAX_REDIRECTS,
    allow: new AllowList(config.LOUPE_GATEWAY_FETCH_ALLOW),
    ...(o.resolve ? { resolve: o.resolve } : {}),
  };
  const maxPromptChars = config.LOUPE_GATEWAY_MAX_PROMPT_CHARS || 16 * o.maxPositions;
  const maxMessages = config.LOUPE_GATEWAY_MAX_MESSAGES || Math.ceil(o.maxPositions / 2);
  /**
   * The decoders' maximum context (tokens), from their Info, asked once and again every
   * minute; 0 (no check here; the decoder still checks) while no decoder has answered.
   */
  let context = { tokens: 0, at: 0 };
  const decoderContext = async (ctx: {
    signal: AbortSignal;
    requestId: string;
    deadline: number;
  }) => {
    if (Date.now() - context.at < 60_000) return context.tokens;
    try {
      const info = await stages.decoderInfo({
        ...ctx,
        deadline: Math.min(ctx.deadline, Date.now() + 2000),
      });
      context = { tokens: info.maxContext, at: Date.now() };
    } catch {
      // The request itself will meet the same decoder and get its answer.
    }
    return context.tokens;
  };

  /** Image file (sha256, split) → the sub-image hash this gateway's preprocessor gave it. */
  const subImageHashes = new BoundedMap<string, { hash: Buffer; split: boolean }>(10_000);
  let inFlight = 0;
  const registers = [registry];
  const metrics = {
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
  };
  new Gauge({
    name: 'loupe_gateway_requests_in_flight',
    help: 'Chat completions being handled.',
    registers,
    collect() {
      this.set(inFlight);
    },
  });

  /** Images → embeddings, messages → prompt ids, sampling → the decoder's request. */
  async function prepare(
    body: ChatCompletionRequest,
    signal: AbortSignal,
    requestId: string,
    deadline: number,
  ): Promise<Prepared> {
    if (body.model !== modelId) {
      throw new ApiError(
        404,
        `The model \`${body.model}\` does not exist; this server serves \`${modelId}\``,
        'invalid_request_error',
        'model_not_found',
        'model',
      );
    }
    // Caps before any work: the cost of templating and tokenizing grows with these.
    if (body.messages.length > maxMessages) {
      throw invalid(
        `the request has ${body.messages.length} messages, over the limit of ${maxMessages}`,
        'messages',
        'too_many_messages',
      );
    }
    let chars = 0;
    for (const m of body.messages) {
      if (typeof m.content === 'string') chars += m.content.length;
      else for (const part of m.content) if (part.type === 'text') chars += part.text.length;
    }
    if (chars > maxPromptChars) {
      throw invalid(
        `the messages hold ${chars} characters of text, over the limit of ${maxPromptChars}`,
        'messages',
        'prompt_too_long',
      );
    }
    if ((body.n ?? 1) !== 1)
      throw invalid(
        '`n` must be 1: one choice per request is supported',
        'n',
        'unsupported_parameter',
      );
    if ((body.top_logprobs ?? 0) > 0 && !body.logprobs)
      throw invalid('`top_logprobs` needs `logprobs: true`', 'top_logprobs');

    const images: Array<{ url: string; field: string; split: boolean }> = [];
    // Control tokens spelled in a message (`<image>`, `<end_of_utterance>`, ...) are escaped,
    // so they reach the model as plain text: nobody forges an image or a turn.
    let escaped = false;
    const plain = (text: string) => {
      const safe = tokenizer.escapeLiteral(text);
      if (safe !== text) escaped = true;
      return { type: 'text' as const, text: safe };
    };
    const messages: TemplateMessage[] = body.messages.map((m, mi) => ({
      role: m.role === 'developer' ? 'system' : m.role,
      content:
        typeof m.content === 'string'
          ? [plain(m.content)]
          : m.content.map((part, pi) => {
              if (part.type === 'text') return plain(part.text);
              images.push({
                url: part.image_url.url,
                field: `messages[${mi}].content[${pi}].image_url.url`,
                split: part.image_url.split ?? body.image_splitting ?? processor.doImageSplitting,
              });
              return { type: 'image' as const };
            }),
    }));
    if (images.length > config.LOUPE_GATEWAY_MAX_IMAGES) {
      throw invalid(
        `the request has ${images.length} images, over the limit of ${config.LOUPE_GATEWAY_MAX_IMAGES}`,
        'messages',
        'too_many_images',
      );
    }
    const ctx = { signal, requestId, deadline };
    // Plan before any image work: whether an image is split fixes its token count (5 or 1
    // sub-images of imageSeqLen tokens), so the whole prompt is built and checked against the
    // decoder's context now, and a request that cannot fit costs no fetch, preprocessing or
    // encoding.
    const input = {
      messages,
      escaped,
      splits: images.map((i) => i.split),
      imageSeqLen: processor.imageSeqLen,
    };
    const offload = o.prompts !== undefined && chars > INLINE_PROMPT_CHARS;
    metrics.prompts.inc({ where: offload ? 'pool' : 'inline' });
    const ids = offload
      ? await o.prompts!.ids(input, signal)
      : promptIds({ tokenizer, template }, input);
    const maxContext = await decoderContext(ctx);
    const asked = body.max_completion_tokens ?? body.max_tokens ?? 0;
    if (maxContext > 0 && (ids.length >= maxContext || ids.length + asked > maxContext)) {
      throw invalid(
        ids.length >= maxContext
          ? `the prompt has ${ids.length} tokens (images included); the maximum context is ${maxContext} tokens, prompt and answer together`
          : `the prompt (${ids.length} tokens, images included) + \`max_tokens\` (${asked}) exceed the maximum context of ${maxContext} tokens`,
        'messages',
        'context_length_exceeded',
      );
    }
    const embedded = await Promise.all(
      images.map(async ({ url, field, split }) => {
        const bytes = await loadImage(url, field, fetchOptions, signal);
        // The encoder's cache is keyed by the hash of the sub-images it encodes (it checks
        // any hash a caller claims), so the key is known once the preprocessor has run; a
        // file this gateway preprocessed before skips that step through sub-image hashes.
        const fileKey = `${createHash('sha256').update(bytes).digest('hex')}:${split}`;
        const known = subImageHashes.get(fileKey);
        let found = known ? await stages.lookup(known.hash, known.split, ctx) : undefined;
        if (!found) {
          const pre = await stages.preprocess({ image: bytes, split }, ctx);
          const contentHash = subImagesHash(
            pre.subImages.map(({ height, width, pixels }) => ({
              height,
              width,
              pixels: pixels?.data ?? new Uint8Array(0),
            })),
          );
          subImageHashes.set(fileKey, { hash: contentHash, split: pre.split });
          found =
            (known ? undefined : await stages.lookup(contentHash, pre.split, ctx)) ??
            (await stages.encode(
              {
                subImages: pre.subImages,
                contentHash,
                split: pre.split,
                outputDtype: Dtype.DTYPE_FLOAT16,
              },
              ctx,
            ));
          metrics.images.inc({ source: found.cacheHit ? 'cache' : 'computed' });
        } else {
          metrics.images.inc({ source: 'cache' });
        }
        const t = found.embeddings!;
        const [subImages, tokens, hidden] = t.shape.map(Number) as [number, number, number];
        return { split: subImages > 1, rows: subImages * tokens, hidden, tensor: t };
      }),
    );
    const splitMismatch = embedded.findIndex((e, i) => e.split !== images[i]!.split);
    if (splitMismatch >= 0)
      throw new Error(
        `image ${splitMismatch} came back ${embedded[splitMismatch]!.split ? '' : 'not '}split`,
      );
    const positions = ids.flatMap((id, i) => (id === o.imageTokenId ? [i] : []));
    const rows = embedded.reduce((n, e) => n + e.rows, 0);
    if (positions.length !== rows)
      throw new Error(`prompt has ${positions.length} image tokens but ${rows} embedding rows`);
    let at = 0;
    const stop =
      body.stop === undefined || body.stop === null
        ? []
        : typeof body.stop === 'string'
          ? [body.stop]
          : body.stop;
    return {
      promptTokens: ids.length,
      stop,
      request: {
        promptTokenIds: ids,
        images: embedded.map((e) => {
          const p = positions.slice(at, at + e.rows);
          at += e.rows;
          return {
            embeddings: { dtype: e.tensor.dtype, shape: [e.rows, e.hidden], data: e.tensor.data },
            positions: p,
          };
        }),
        sampling: {
          temperature: body.temperature ?? 1,
          ...(body.top_p != null ? { topP: body.top_p } : {}),
          ...(body.top_k != null ? { topK: body.top_k } : {}),
          ...(body.min_p != null ? { minP: body.min_p } : {}),
          ...(body.repetition_penalty != null
            ? { repetitionPenalty: body.repetition_penalty }
            : {}),
          ...(body.presence_penalty != null ? { presencePenalty: body.presence_penalty } : {}),
          ...(body.frequency_penalty != null ? { frequencyPenalty: body.frequency_penalty } : {}),
          ...(body.seed != null ? { seed: body.seed } : {}),
        },
        stopTokenIds: [],
        maxNewTokens: body.max_completion_tokens ?? body.max_tokens ?? 0,
        logprobs: body.logprobs ?? false,
        topLogprobs: body.top_logprobs ?? 0,
      },
    };
  }

  const logprobEntry = (token: {
    id: number;
    logprob: number;
    topLogprobs: Array<{ id: number; logprob: number }>;
  }) => {
    const piece = (id: number) => tokenizer.decode([id]);
    const bytes = (s: string) => [...Buffer.from(s, 'utf8')];
    return {
      token: piece(token.id),
      logprob: token.logprob,
      bytes: bytes(piece(token.id)),
      top_logprobs: token.topLogprobs.map((t) => ({
        token: piece(t.id),
        logprob: t.logprob,
        bytes: bytes(piece(t.id)),
      })),
    };
  };

  const app = new Hono<{
    Variables: {
      requestId: string;
      /** A chat completion's admission: whom it is charged to, and how it leaves. */
      admission: { client: string; release: () => void; owned: boolean };
    };
  }>();

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
        keyId:
          keys.enabled && bearer
            ? createHash('sha256').update(bearer).digest('hex').slice(0, 12)
            : null,
      },
      'request',
    );
  });

  const fail = (c: Context, error: ApiError) => {
    if (error.retryAfter !== undefined) c.header('Retry-After', String(error.retryAfter));
    return c.json(error.body(), error.status);
  };
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
    return fail(c, new ApiError(500, 'internal error', 'server_error'));
  });

  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.get('/readyz', async (c) => {
    const stagesReady = await stages.ready(2000);
    const ready = Object.values(stagesReady).every(Boolean);
    return c.json({ ready, stages: stagesReady }, ready ? 200 : 503);
  });
  app.get('/openapi.json', (c) => c.json(openApiDocument(modelId)));

  // Authentication for the API.
  app.use('/v1/*', async (c, next) => {
    if (!keys.enabled) return next();
    const key = bearerKey(c.req.header('authorization'));
    // Guessing keys costs: a client address with too many failures waits, before any check.
    const address = clientAddress(c);
    const wait = authFailures.retryAfter(address);
    if (wait) {
      return fail(
        c,
        new ApiError(
          429,
          'too many failed authentications from this address; retry later',
          'rate_limit_error',
          'auth_rate_limited',
          null,
          wait,
        ),
      );
    }
    if (!keys.check(key)) {
      authFailures.add(address, 1);
      return fail(
        c,
        new ApiError(
          401,
          'Incorrect or missing API key: send `Authorization: Bearer <key>`',
          'authentication_error',
          'invalid_api_key',
        ),
      );
    }
    return next();
  });

  app.get('/v1/models', (c) =>
    c.json({
      object: 'list',
      data: [{ id: modelId, object: 'model', created: 0, owned_by: 'loupe' }],
    }),
  );

  // Admission for chat completions, before the body is read: rates, the global and per-key
  // in-flight limits. The handler takes over the release once it has the body; a request that
  // ends before (a body over the limit, a client gone) is released here.
  app.post('/v1/chat/completions', async (c, next) => {
    // Rate limits per key (the normalized key the auth check accepted), or per client
    // address when no keys are configured.
    const client = keys.enabled
      ? `key:${createHash('sha256')
          .update(bearerKey(c.req.header('authorization')) ?? '')
          .digest('hex')}`
      : `addr:${clientAddress(c)}`;
    const waitRequests = requestRate.retryAfter(client);
    const waitTokens = tokenRate.retryAfter(client);
    if (waitRequests || waitTokens) {
      throw new ApiError(
        429,
        `rate limit reached: ${waitRequests ? `${requestRate.limit} requests` : `${tokenRate.limit} tokens`} per minute`,
        'rate_limit_error',
        'rate_limit_exceeded',
        null,
        Math.max(waitRequests, waitTokens),
      );
    }
    if (inFlight >= config.LOUPE_GATEWAY_MAX_IN_FLIGHT) {
      throw new ApiError(
        429,
        `the gateway is handling ${inFlight} requests, its limit`,
        'rate_limit_error',
        'overloaded',
        null,
        1,
      );
    }
    // The body's share of the memory budget, before a byte of it is read: its declared size,
    // or the body limit when it comes chunked.
    const declared = Number(c.req.header('content-length'));
    const bodyBytes =
      Number.isSafeInteger(declared) && declared >= 0 && !c.req.header('transfer-encoding')
        ? Math.min(declared, config.LOUPE_GATEWAY_MAX_BODY_BYTES)
        : config.LOUPE_GATEWAY_MAX_BODY_BYTES;
    const cost = BODY_COST_FACTOR * bodyBytes;
    if (cost > memory.limit) {
      throw new ApiError(
        413,
        `a body of ${bodyBytes} bytes needs ${cost} bytes of the gateway's memory budget of ${memory.limit}`,
        'invalid_request_error',
        'body_too_large',
      );
    }
    const mine = inFlightOf.get(client) ?? 0;
    const perKey = config.LOUPE_GATEWAY_MAX_IN_FLIGHT_PER_KEY;
    if (perKey > 0 && mine >= perKey) {
      throw new ApiError(
        429,
        `this key has ${mine} requests in flight, its limit`,
        'rate_limit_error',
        'too_many_concurrent_requests',
        null,
        1,
      );
    }
    // Counted from here, the body's arrival included (bodyLimit reads a chunked body whole
    // before the handler runs, so admission comes first), so slow bodies cannot overshoot; the
    // request is charged to its rate now, in the same turn as the check, so N requests at
    // once against a limit of M admit exactly M (failures and disconnects count too).
    const releaseMemory = memory.reserve(cost);
    if (!releaseMemory) {
      throw new ApiError(
        429,
        `the gateway's memory budget is in use by requests in flight (${memory.used} of ${memory.limit} bytes); retry shortly`,
        'rate_limit_error',
        'memory_budget',
        null,
        1,
      );
    }
    inFlight++;
    inFlightOf.set(client, mine + 1);
    requestRate.add(client, 1);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      releaseMemory();
      inFlight--;
      const left = (inFlightOf.get(client) ?? 1) - 1;
      if (left > 0) inFlightOf.set(client, left);
      else inFlightOf.delete(client);
    };
    c.set('admission', { client, release, owned: false });
    try {
      await next();
    } finally {
      if (!c.get('admission').owned) release();
    }
  });

  app.post(
    '/v1/chat/completions',
    bodyLimit({
      maxSize: config.LOUPE_GATEWAY_MAX_BODY_BYTES,
      onError: (c) =>
        fail(
          c,
          new ApiError(
            413,
            `the request body is over the limit of ${config.LOUPE_GATEWAY_MAX_BODY_BYTES} bytes`,
            'invalid_request_error',
            'body_too_large',
          ),
        ),
    }),
    async (c) => {
      const started = performance.now();
      const { client, release } = c.get('admission');
      c.set('admission', { client, release, owned: true });
      let body: ChatCompletionRequest;
      try {
        let json: unknown;
        try {
          json = await c.req.json();
        } catch {
          throw invalid('the body is not valid JSON', null, 'invalid_json');
        }
        refuseUnsupported(json);
        const parsed = ChatCompletionRequest.safeParse(json);
        if (!parsed.success) throw fromZod(parsed.error);
        body = parsed.data;
      } catch (error) {
        release();
        throw error;
      }
      // Images to fetch take up to their byte cap each: that too is reserved before any fetch.
      const toFetch = body.messages
        .flatMap((m) => (typeof m.content === 'string' ? [] : m.content))
        .filter((p) => p.type === 'image_url' && /^https?:/i.test(p.image_url.url)).length;
      const releaseImages =
        toFetch === 0 ? () => {} : memory.reserve(toFetch * config.LOUPE_GATEWAY_MAX_IMAGE_BYTES);
      if (!releaseImages) {
        release();
        throw new ApiError(
          429,
          `the gateway's memory budget cannot hold ${toFetch} more fetched images now; retry shortly`,
          'rate_limit_error',
          'memory_budget',
          null,
          1,
        );
      }
      // The completion budget is reserved with the request and what is not used refunded at
      // the end, so concurrent requests cannot overspend the token rate between them.
      const reserved = body.max_completion_tokens ?? body.max_tokens ?? 0;
      tokenRate.add(client, reserved);

      const controller = new AbortController();
      const clientGone = () => controller.abort(new Error('the client disconnected'));
      c.req.raw.signal.addEventListener('abort', clientGone, { once: true });
      if (c.req.raw.signal.aborted) clientGone();
      const requestId = c.get('requestId');
      const deadline = Date.now() + config.LOUPE_GATEWAY_REQUEST_TIMEOUT_MS;
      // Tokens this request used: its prompt once built, then the completion as it ends.
      let usedTokens = 0;
      const done = () => {
        release();
        releaseImages();
        // The reservation becomes what was used, for failures and disconnects too.
        tokenRate.add(client, usedTokens - reserved);
        c.req.raw.signal.removeEventListener('abort', clientGone);
        metrics.duration.observe((performance.now() - started) / 1000);
      };
      // A caller's W3C traceparent makes this request a part of its trace.
      const parent = propagation.extract(otelContext.active(), c.req.raw.headers, headerGetter);
      return tracer.startActiveSpan('POST /v1/chat/completions', {}, parent, async (span) => {
        span.setAttribute('loupe.request_id', requestId);
        let handedOff = false;
        try {
          const prepared = await prepare(body, controller.signal, requestId, deadline);
          metrics.promptTokens.inc(prepared.promptTokens);
          usedTokens = prepared.promptTokens;
          const id = `chatcmpl-${requestId}`;
          const created = Math.floor(Date.now() / 1000);
          const stream = stages.generate(prepared.request, {
            signal: controller.signal,
            requestId,
            deadline,
          });
          const detok = new IncrementalDetokenizer(tokenizer, prepared.stop);
          let completion = 0;
          const finishOf = (m: GenerateResponse): 'stop' | 'length' =>
            m.event?.$case === 'finished' && m.event.value.reason === 2 ? 'length' : 'stop';

          /** Each event of the decoder, as text deltas; stops the decoder at a stop string. */
          async function* deltas() {
            for await (const raw of stream as AsyncIterable<GenerateResponse>) {
              if (raw.event?.$case === 'token') {
                completion++;
                const text = detok.push(raw.event.value.id);
                yield {
                  kind: 'text' as const,
                  text,
                  logprobs: body.logprobs ? [logprobEntry(raw.event.value)] : undefined,
                };
                if (detok.stopped) {
                  stream.cancel();
                  yield { kind: 'finish' as const, finish: 'stop' as const };
                  return;
                }
              } else if (raw.event?.$case === 'finished') {
                const tail = detok.finish();
                if (tail) yield { kind: 'text' as const, text: tail, logprobs: undefined };
                yield { kind: 'finish' as const, finish: finishOf(raw) };
                return;
              }
            }
          }
          const usage = () => ({
            prompt_tokens: prepared.promptTokens,
            completion_tokens: completion,
            total_tokens: prepared.promptTokens + completion,
          });
          let accounted = false;
          const account = () => {
            if (accounted) return;
            accounted = true;
            metrics.completionTokens.inc(completion);
            usedTokens = prepared.promptTokens + completion;
          };
          const decoderError = (error: unknown) =>
            error instanceof ApiError
              ? error
              : stageFailure(new StageError('decoder', error as never));

          if (!body.stream) {
            let content = '';
            const logprobs: unknown[] = [];
            let finish: string = 'stop';
            try {
              for await (const d of deltas()) {
                if (d.kind === 'finish') finish = d.finish;
                else {
                  content += d.text;
                  if (d.logprobs) logprobs.push(...d.logprobs);
                }
              }
            } catch (error) {
              throw controller.signal.aborted ? error : decoderError(error);
            }
            account();
            metrics.requests.inc({ route: 'chat', status: '200' });
            return c.json({
              id,
              object: 'chat.completion',
              created,
              model: modelId,
              choices: [
                {
                  index: 0,
                  message: { role: 'assistant', content },
                  logprobs: body.logprobs ? { content: logprobs } : null,
                  finish_reason: finish,
                },
              ],
              usage: usage(),
            });
          }

          handedOff = true;
          const chunk = (delta: object, finish: string | null, logprobs?: unknown[]) => ({
            id,
            object: 'chat.completion.chunk',
            created,
            model: modelId,
            choices: [
              {
                index: 0,
                delta,
                logprobs: logprobs ? { content: logprobs } : null,
                finish_reason: finish,
              },
            ],
          });
          return streamSSE(c, async (sse) => {
            sse.onAbort(() => controller.abort(new Error('the client disconnected')));
            try {
              await sse.writeSSE({
                data: JSON.stringify(chunk({ role: 'assistant', content: '' }, null)),
              });
              for await (const d of deltas()) {
                if (d.kind === 'finish')
                  await sse.writeSSE({ data: JSON.stringify(chunk({}, d.finish)) });
                else if (d.text || d.logprobs)
                  await sse.writeSSE({
                    data: JSON.stringify(chunk({ content: d.text }, null, d.logprobs)),
                  });
              }
              if (body.stream_options?.include_usage) {
                await sse.writeSSE({
                  data: JSON.stringify({
                    id,
                    object: 'chat.completion.chunk',
                    created,
                    model: modelId,
                    choices: [],
                    usage: usage(),
                  }),
                });
              }
              await sse.writeSSE({ data: '[DONE]' });
              account();
              metrics.requests.inc({ route: 'chat', status: '200' });
            } catch (error) {
              if (!controller.signal.aborted) {
                const api = decoderError(error);
                await sse.writeSSE({ data: JSON.stringify(api.body()) });
              }
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
        new ApiError(
          405,
          `${path} takes ${methods.replace(', HEAD', '')}, not ${c.req.method.slice(0, 16)}`,
          'invalid_request_error',
          'method_not_allowed',
        ),
      );
    });
  }

  app.notFound((c) =>
    fail(
      c,
      new ApiError(
        404,
        `no route ${c.req.method} ${c.req.path}`,
        'invalid_request_error',
        'not_found',
      ),
    ),
  );

  return { app, inFlight: () => inFlight };
}

/** The key of an `Authorization: Bearer <key>` header (the scheme in any case), trimmed. */
function bearerKey(header: string | undefined): string | undefined {
  const match = header === undefined ? null : /^bearer\s+(.*)$/i.exec(header.trim());
  return match ? match[1]!.trim() : undefined;
}

/** A Map that forgets its least recently used entries beyond `limit`. */
class BoundedMap<K, V> {
  readonly #map = new Map<K, V>();
  constructor(private readonly limit: number) {}

  get(key: K): V | undefined {
    const value = this.#map.get(key);
    if (value !== undefined) {
      this.#map.delete(key);
      this.#map.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    this.#map.delete(key);
    this.#map.set(key, value);
    if (this.#map.size > this.limit) this.#map.delete(this.#map.keys().next().value as K);
  }
}

/** Reads trace headers (traceparent, tracestate) from a fetch Headers object. */
const headerGetter: TextMapGetter<Headers> = {
  keys: (headers) => [...headers.keys()],
  get: (headers, key) => headers.get(key) ?? undefined,
};
