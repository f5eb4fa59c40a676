// The gateway's request pipeline in-process: the Hono app called with `app.request()`, in
// front of ScriptedStages — a test double of the three gRPC stages (StageClient) that answers
// from a script and records every call. The real stages behind real gRPC are exercised by
// test/gateway.test.ts; here each step's decisions are checked fast and exactly: what reaches
// which stage, in which order, and what the client sees for each stage failure.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';
import { afterAll, describe, expect, it } from 'vitest';
import {
  FinishReason,
  type GenerateRequest,
  type GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import type { EncodeRequest, EncodeResponse } from '../../proto/gen/loupe/v1/encoder.js';
import type { PreprocessRequest } from '../../proto/gen/loupe/v1/preprocessor.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import {
  loadChatTemplate,
  loadImageProcessorConfig,
  loadTokenizer,
  openCheckpoint,
  writeTinyModel,
} from '../model/index.js';
import { createLogger, createRegistry, subImagesHash } from '../runtime/index.js';
import { createGateway } from './app.js';
import { loadGatewayConfig } from './config.js';
import type { CallContext, StageClient } from './stage-client.js';
import { parseSse } from '../../test/helpers/sse.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-app-'));
const modelDir = join(work, 'tiny');
writeTinyModel({ out: modelDir, seed: 0 });
afterAll(() => rmSync(work, { recursive: true, force: true }));

const checkpoint = openCheckpoint(modelDir);
const tokenizer = loadTokenizer(modelDir);
const processor = loadImageProcessorConfig(modelDir);
const HIDDEN = checkpoint.config.text.hiddenSize;
const IMAGE_TOKEN = checkpoint.config.imageTokenId;
const KEY = 'sk-app-test';
const png = readFileSync(
  join(import.meta.dirname, '..', '..', 'test', 'fixtures', 'images', 'png-200x377.png'),
);
const dataUrl = `data:image/png;base64,${png.toString('base64')}`;

type Failure = { code: status; details: string; reason?: string };

const serviceError = ({ code, details, reason }: Failure): ServiceError => {
  const metadata = new Metadata();
  if (reason) metadata.set('loupe-reason', reason);
  return Object.assign(new Error(details), { code, details, metadata });
};

/** A test double of the three stages: answers from its script, records every call. */
class ScriptedStages implements StageClient {
  calls: string[] = [];
  generated: GenerateRequest[] = [];
  encoded: EncodeRequest[] = [];
  cancelled = 0;
  readonly #cache = new Map<string, EncodeResponse>();

  constructor(
    public script: {
      /** Token ids the decoder streams, then its finish reason. */
      tokens?: number[];
      finish?: FinishReason;
      maxContext?: number;
      /** The decoder fails Generate at its start, or after its tokens (mid-stream). */
      generateFails?: Failure;
      failMidStream?: boolean;
      /** The first token waits for this. */
      firstToken?: Promise<void>;
      /** The preprocessor's sub_images_hash; unset: none (a preprocessor from before it). */
      subImagesHash?: Buffer;
    } = {},
  ) {}

  async preprocess(request: PreprocessRequest, _ctx: CallContext) {
    this.calls.push('preprocess');
    const count = request.split ? 5 : 1;
    return {
      subImages: Array.from({ length: count }, (_, i) => ({
        height: 2,
        width: 2,
        pixels: { dtype: Dtype.DTYPE_UINT8, shape: [3, 2, 2], data: Buffer.alloc(12, i) },
      })),
      split: request.split,
      subImagesHash: this.script.subImagesHash ?? Buffer.alloc(0),
    } as never;
  }

  async lookup(contentHash: Buffer, split: boolean, _ctx: CallContext) {
    this.calls.push('lookup');
    const found = this.#cache.get(`${contentHash.toString('hex')}:${split}`);
    return found ? { ...found, cacheHit: true } : undefined;
  }

  async encode(request: EncodeRequest, _ctx: CallContext) {
    this.calls.push('encode');
    this.encoded.push(request);
    const n = request.subImages.length;
    const response: EncodeResponse = {
      embeddings: {
        dtype: Dtype.DTYPE_FLOAT16,
        shape: [n, processor.imageSeqLen, HIDDEN],
        data: Buffer.alloc(n * processor.imageSeqLen * HIDDEN * 2),
      },
      cacheHit: false,
    };
    this.#cache.set(`${request.contentHash.toString('hex')}:${request.split}`, response);
    return response;
  }

  async decoderInfo(_ctx: CallContext) {
    this.calls.push('info');
    return {
      maxContext: this.script.maxContext ?? 4096,
      maxNewTokens: 1024,
      vocabSize: checkpoint.config.text.vocabSize,
    } as never;
  }

  generate(request: GenerateRequest, ctx: CallContext) {
    this.calls.push('generate');
    this.generated.push(request);
    const { tokens = [], finish = FinishReason.FINISH_REASON_STOP } = this.script;
    const fails = this.script.generateFails;
    const midStream = this.script.failMidStream;
    const firstToken = this.script.firstToken;
    let cancelled = false;
    const cancel = () => {
      if (cancelled) return;
      cancelled = true;
      this.cancelled++;
    };
    // As the gRPC client does: the request's end cancels the call.
    ctx.signal.addEventListener('abort', cancel, { once: true });
    return {
      cancel,
      async *[Symbol.asyncIterator](): AsyncGenerator<GenerateResponse> {
        if (fails && !midStream) throw serviceError(fails);
        await firstToken;
        for (const [index, id] of tokens.entries()) {
          if (cancelled) return;
          yield { event: { $case: 'token', value: { id, index, logprob: -1, topLogprobs: [] } } };
        }
        if (fails) throw serviceError(fails);
        yield {
          event: {
            $case: 'finished',
            value: {
              reason: finish,
              promptTokens: request.promptTokenIds.length,
              generatedTokens: tokens.length,
              timings: undefined,
            },
          },
        };
      },
    };
  }

  async ready() {
    return { preprocessor: true, encoder: true, decoder: true };
  }
}

function gateway(
  stages: ScriptedStages,
  env: Record<string, string> = {},
  keys: readonly string[] = [KEY],
) {
  const { app } = createGateway({
    config: loadGatewayConfig({ LOUPE_MODEL_DIR: modelDir, ...env }),
    modelId: 'tiny',
    tokenizer,
    template: loadChatTemplate(modelDir),
    processor,
    imageTokenId: IMAGE_TOKEN,
    maxPositions: checkpoint.config.text.maxPositionEmbeddings,
    stages,
    keys,
    registry: createRegistry('gateway'),
    logger: createLogger({ service: 'gateway', level: 'silent' }),
    tracer: trace.getTracer('test'),
  });
  const post = (body: unknown, headers: Record<string, string> = {}) =>
    app.request('/v1/chat/completions', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${KEY}`,
        ...headers,
      },
      body: JSON.stringify(body),
    });
  return { app, post };
}

const ask = (content: unknown, extra: object = {}) => ({
  model: 'tiny',
  messages: [{ role: 'user', content }],
  ...extra,
});

const image = (split?: boolean) => ({
  type: 'image_url',
  image_url: { url: dataUrl, ...(split === undefined ? {} : { split }) },
});

/** The events' data of an SSE body. */
const events = parseSse;

/** The ids the tiny tokenizer gives for a text (without its leading BOS), to script the decoder. */
const idsOf = (text: string) => tokenizer.encode(text).slice(1);

describe('the pipeline in-process, with scripted stages', () => {
  it('answers with the decoded tokens, usage counted, images placed at their image tokens', async () => {
    const stages = new ScriptedStages({
      tokens: idsOf('hello world'),
      finish: FinishReason.FINISH_REASON_LENGTH,
    });
    const { post } = gateway(stages);
    const res = await post(ask([image(false), { type: 'text', text: 'what is it?' }]));
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      choices: Array<{ message: { content: string }; finish_reason: string }>;
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(body.choices[0]!.message.content).toBe('hello world');
    expect(body.choices[0]!.finish_reason).toBe('length');
    // Plan (Info) before any image work, then lookup misses, preprocess, encode, generate.
    expect(stages.calls).toEqual(['info', 'preprocess', 'lookup', 'encode', 'generate']);
    const sent = stages.generated[0]!;
    expect(body.usage.prompt_tokens).toBe(sent.promptTokenIds.length);
    expect(body.usage.completion_tokens).toBe(idsOf('hello world').length);
    const imagePositions = sent.promptTokenIds.flatMap((id, i) => (id === IMAGE_TOKEN ? [i] : []));
    expect(imagePositions).toHaveLength(processor.imageSeqLen);
    expect(sent.images).toHaveLength(1);
    expect(sent.images[0]!.embeddings!.shape).toEqual([processor.imageSeqLen, HIDDEN]);
    // The decoder gets the image's identity (its sub-images' hash) for its prefix cache.
    expect(sent.images[0]!.contentHash).toEqual(stages.encoded[0]!.contentHash);
    expect(sent.images[0]!.contentHash).toHaveLength(32);
  });

  it("names an image by the preprocessor's sub-image hash, hashing the pixels only without one", async () => {
    // A preprocessor that sends none: the gateway hashes the sub-images it got.
    const own = new ScriptedStages({ tokens: idsOf('ok') });
    expect((await gateway(own).post(ask([image(false)]))).status).toBe(200);
    const pixels = Buffer.alloc(12, 0); // the double's one 2×2 sub-image
    expect(own.encoded[0]!.contentHash).toEqual(subImagesHash([{ height: 2, width: 2, pixels }]));
    // One that sends it (made in its worker threads): used as sent, for Lookup and Encode.
    const sent = Buffer.alloc(32, 0xab);
    const stages = new ScriptedStages({ tokens: idsOf('ok'), subImagesHash: sent });
    expect((await gateway(stages).post(ask([image(false)]))).status).toBe(200);
    expect(stages.calls).toEqual(['info', 'preprocess', 'lookup', 'encode', 'generate']);
    expect(stages.encoded[0]!.contentHash).toEqual(sent);
    expect(stages.generated[0]!.images[0]!.contentHash).toEqual(sent);
  });

  it('streams the role chunk, one chunk per delta, the finish, the usage, then [DONE]', async () => {
    const tokens = idsOf('a b c');
    const stages = new ScriptedStages({ tokens });
    const { post } = gateway(stages);
    const res = await post(
      ask('hi', { stream: true, stream_options: { include_usage: true }, logprobs: true }),
    );
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const data = events(await res.text());
    expect(data.at(-1)).toBe('[DONE]');
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    const deltas = chunks.filter((c) => c.choices[0]?.delta?.content !== undefined).slice(1);
    expect(deltas.map((c) => c.choices[0].delta.content).join('')).toBe('a b c');
    expect(deltas.flatMap((c) => c.choices[0].logprobs.content)).toHaveLength(tokens.length);
    const finish = chunks.find((c) => c.choices[0]?.finish_reason);
    expect(finish.choices[0].finish_reason).toBe('stop');
    expect(chunks.at(-1).usage.completion_tokens).toBe(tokens.length);
  });

  it('sends the status and first byte of a stream with its first token, not before', async () => {
    let release!: () => void;
    const stages = new ScriptedStages({
      tokens: idsOf('late'),
      firstToken: new Promise<void>((r) => (release = r)),
    });
    const { post } = gateway(stages);
    let answered = false;
    const pending = Promise.resolve(post(ask('hi', { stream: true }))).then((res) => {
      answered = true;
      return res;
    });
    // The decoder has the request, and the client has nothing yet.
    while (stages.generated.length === 0) await new Promise((r) => setImmediate(r));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(answered).toBe(false);
    release();
    const res = await pending;
    expect(res.status).toBe(200);
    const data = events(await res.text());
    expect(JSON.parse(data[0]!).choices[0].delta).toEqual({ role: 'assistant', content: '' });
    const text = data
      .slice(1, -1)
      .map((d) => JSON.parse(d).choices[0]?.delta?.content ?? '')
      .join('');
    expect(text).toBe('late');
  });

  it("lets one key hold 8 requests by default (half of one decoder's 16 slots): the 9th is a 429", async () => {
    let release!: () => void;
    const stages = new ScriptedStages({
      tokens: idsOf('held'),
      firstToken: new Promise<void>((r) => (release = r)),
    });
    const { post } = gateway(stages);
    const held = Array.from({ length: 8 }, () =>
      Promise.resolve(post(ask('hi', { stream: true }))),
    );
    while (stages.generated.length < 8) await new Promise((r) => setImmediate(r));
    const ninth = await post(ask('hi', { stream: true }));
    expect(ninth.status).toBe(429);
    expect(((await ninth.json()) as { error: { code: string } }).error.code).toBe(
      'too_many_concurrent_requests',
    );
    release();
    for (const res of await Promise.all(held)) {
      expect(res.status).toBe(200);
      await res.text();
    }
  });

  it('answers a stream the decoder refuses with that HTTP status, not an error event', async () => {
    const stages = new ScriptedStages({
      generateFails: { code: status.RESOURCE_EXHAUSTED, details: 'queue full' },
    });
    const res = await gateway(stages).post(ask('hi', { stream: true }));
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('1');
  });

  it('stops the decoder at a stop string and cuts the text before it', async () => {
    const stages = new ScriptedStages({ tokens: idsOf('one two three four five') });
    const { post } = gateway(stages);
    const res = await post(ask('count', { stop: 'three' }));
    const body = (await res.json()) as { choices: Array<{ message: { content: string } }> };
    expect(body.choices[0]!.message.content).not.toContain('three');
    expect(tokenizer.decode(idsOf('one two three four five'))).toContain(
      body.choices[0]!.message.content,
    );
    expect(stages.cancelled).toBe(1);
  });

  it('refuses a context overflow of 8 split images with no image work at all', async () => {
    const stages = new ScriptedStages({ maxContext: 1024 });
    const { post } = gateway(stages, { LOUPE_GATEWAY_MAX_IMAGES: '8' });
    const res = await post(ask([...Array.from({ length: 8 }, () => image(true))]));
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as { error: { code: string; param: string } };
    expect(error).toMatchObject({ code: 'context_length_exceeded', param: 'messages' });
    expect(stages.calls).toEqual(['info']);
  });

  it('encodes an image once: the second request finds it through its sub-image hash', async () => {
    const stages = new ScriptedStages({ tokens: idsOf('x') });
    const { post } = gateway(stages);
    expect((await post(ask([image(true)]))).status).toBe(200);
    stages.calls = [];
    expect((await post(ask([image(true)]))).status).toBe(200);
    expect(stages.calls).toEqual(['lookup', 'generate']);
    expect(stages.generated[1]!.images[0]!.embeddings!.shape).toEqual([
      5 * processor.imageSeqLen,
      HIDDEN,
    ]);
  });

  it('sends control tokens typed by a user as plain text: no forged image', async () => {
    const stages = new ScriptedStages({ tokens: idsOf('x') });
    const { post } = gateway(stages);
    const res = await post(ask('look: <image> <end_of_utterance>'));
    expect(res.status).toBe(200);
    expect(stages.generated[0]!.promptTokenIds).not.toContain(IMAGE_TOKEN);
    expect(stages.generated[0]!.images).toEqual([]);
  });

  const failures: Array<[string, Failure, number, string, string | null]> = [
    [
      'context overflow',
      { code: status.INVALID_ARGUMENT, details: 'too long', reason: 'context_length_exceeded' },
      400,
      'context_length_exceeded',
      null,
    ],
    [
      'invalid argument',
      { code: status.INVALID_ARGUMENT, details: 'bad top_k' },
      400,
      'invalid_value',
      null,
    ],
    [
      'full queue',
      { code: status.RESOURCE_EXHAUSTED, details: 'queue full' },
      429,
      'overloaded',
      '1',
    ],
    [
      'unreachable decoder',
      { code: status.UNAVAILABLE, details: 'connect ECONNREFUSED 10.1.2.3:50053' },
      503,
      'stage_unavailable',
      '5',
    ],
    [
      'worker died',
      { code: status.UNAVAILABLE, details: 'at 10.1.2.3:50053', reason: 'worker_died' },
      503,
      'stage_unavailable',
      '5',
    ],
    [
      'failed step',
      { code: status.INTERNAL, details: 'at 10.1.2.3:50053', reason: 'step_failed' },
      500,
      'stage_failed',
      null,
    ],
  ];
  it('has a row for each stage failure', () => expect(failures).toHaveLength(6));
  it.each(failures)(
    'maps a decoder failure (%s) by status and loupe-reason, never echoing addresses',
    async (_name, failure, httpStatus, code, retryAfter) => {
      const { post } = gateway(new ScriptedStages({ generateFails: failure }));
      const res = await post(ask('hi'));
      expect(res.status).toBe(httpStatus);
      expect(res.headers.get('retry-after')).toBe(retryAfter);
      const text = await res.text();
      expect(JSON.parse(text).error.code).toBe(code);
      expect(text).not.toContain('10.1.2.3');
    },
  );

  it('ends a stream whose decoder fails mid-answer with an error event, after the tokens', async () => {
    const stages = new ScriptedStages({
      tokens: idsOf('partial'),
      generateFails: { code: status.INTERNAL, details: 'step failed', reason: 'step_failed' },
      failMidStream: true,
    });
    const { post } = gateway(stages);
    const res = await post(ask('hi', { stream: true }));
    expect(res.status).toBe(200);
    const data = events(await res.text());
    expect(data).not.toContain('[DONE]');
    expect(JSON.parse(data.at(-1)!).error).toMatchObject({
      code: 'stage_failed',
      type: 'server_error',
    });
  });

  it('refuses bad input with 4xx naming the parameter, before any stage is called', async () => {
    const stages = new ScriptedStages();
    const { post, app } = gateway(stages);
    const cases: Array<[unknown, number, string | null, string | null]> = [
      [ask([]), 400, 'messages[0].content', 'invalid_value'],
      [ask('hi', { tool_choice: 'auto' }), 400, 'tool_choice', 'unsupported_parameter'],
      [
        ask('hi', {
          response_format: {
            type: 'json_schema',
            json_schema: { name: 'x', schema: { type: 'string', format: 'binary-blob' } },
          },
        }),
        400,
        'response_format.json_schema.schema.format',
        'unsupported_schema',
      ],
      [ask('hi', { logit_bias: { '99999999': 5 } }), 400, 'logit_bias', 'invalid_value'],
      [ask('hi', { logit_bias: { '3': 101 } }), 400, 'logit_bias.3', 'invalid_value'],
      [ask('hi', { n: 9 }), 400, 'n', 'invalid_value'],
      [ask('hi', { top_logprobs: 2 }), 400, 'top_logprobs', null],
      [{ ...ask('hi'), model: 'x'.repeat(10_000) }, 404, 'model', 'model_not_found'],
      [ask('hi', { bogus: 1 }), 400, 'bogus', 'unknown_parameter'],
    ];
    for (const [body, httpStatus, param, code] of cases) {
      const res = await post(body);
      expect(res.status, JSON.stringify(body).slice(0, 80)).toBe(httpStatus);
      const text = await res.text();
      expect(text.length).toBeLessThan(1000); // a 10 kB model name is not echoed back
      expect(JSON.parse(text).error).toMatchObject({ param, code });
    }
    const notJson = await app.request('/v1/chat/completions', {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: '{"model":',
    });
    expect(notJson.status).toBe(400);
    expect(((await notJson.json()) as { error: { code: string } }).error.code).toBe('invalid_json');
    const noKey = await post(ask('hi'), { authorization: 'Bearer wrong' });
    expect(noKey.status).toBe(401);
    // Only the decoders' limits were asked (the token ids of logit_bias are checked against them).
    expect(stages.calls.filter((c) => c !== 'info')).toEqual([]);
  });

  it('charges the token rate with max_tokens at admission and refunds what was not used', async () => {
    const stages = new ScriptedStages({ tokens: idsOf('x') });
    const { post } = gateway(stages, { LOUPE_GATEWAY_TOKENS_PER_MINUTE: '1300' });
    // 1000 reserved → a second request at once would be over the limit...
    const first = await post(ask('hi', { max_tokens: 1000 }));
    expect(first.status).toBe(200);
    // ...but the first used only its prompt and one token, so the refund lets more in.
    for (let i = 0; i < 5; i++)
      expect((await post(ask('hi', { max_tokens: 200 }))).status).toBe(200);
  });

  it('refuses what a web page could send: foreign hosts without keys, foreign origins, non-JSON bodies', async () => {
    const stages = new ScriptedStages({ tokens: idsOf('x') });
    const keyless = gateway(stages, {}, []);
    const send = (app: typeof keyless.app, headers: Record<string, string>, body = ask('hi')) =>
      app.request('/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
    const code = async (res: Response) =>
      ((await res.json()) as { error: { code: string } }).error.code;
    // DNS rebinding: a foreign name pointed at the loopback address.
    const rebound = await send(keyless.app, { host: 'attacker.example:8080' });
    expect(rebound.status).toBe(403);
    expect(await code(rebound)).toBe('host_not_allowed');
    for (const host of ['localhost:8080', '127.0.0.1:8080', '[::1]:8080', 'app.localhost'])
      expect((await send(keyless.app, { host })).status, host).toBe(200);
    // A page's cross-origin POST.
    const page = await send(keyless.app, { host: 'localhost', origin: 'https://attacker.example' });
    expect(page.status).toBe(403);
    expect(await code(page)).toBe('origin_not_allowed');
    const plain = await send(keyless.app, { host: 'localhost', 'content-type': 'text/plain' });
    expect(plain.status).toBe(415);
    expect(await code(plain)).toBe('unsupported_media_type');
    // With keys, any host; origins only when listed.
    const keyed = gateway(stages, { LOUPE_GATEWAY_ALLOWED_ORIGINS: 'https://app.example' });
    const auth = { authorization: `Bearer ${KEY}`, host: 'loupe.example' };
    expect((await send(keyed.app, auth)).status).toBe(200);
    expect((await send(keyed.app, { ...auth, origin: 'https://app.example' })).status).toBe(200);
    expect((await send(keyed.app, { ...auth, origin: 'https://other.example' })).status).toBe(403);
  });

  it('checks every range the decoder has before any image work', async () => {
    const stages = new ScriptedStages();
    const { post } = gateway(stages);
    const cases: Array<[object, string]> = [
      [{ stop: '' }, 'stop'],
      [{ stop: ['a', ''] }, 'stop[1]'],
      [{ max_tokens: 5000 }, 'max_tokens'],
      [{ top_k: checkpoint.config.text.vocabSize + 1 }, 'top_k'],
      [{ repetition_penalty: 1000 }, 'repetition_penalty'],
    ];
    for (const [extra, param] of cases) {
      const res = await post(ask([image(true), { type: 'text', text: 'hi' }], extra));
      expect(res.status, param).toBe(400);
      expect(((await res.json()) as { error: { param: string } }).error.param).toBe(param);
    }
    expect(stages.calls.filter((c) => c !== 'info')).toEqual([]);
  });

  it('ends a stream whose client stops reading, and cancels its decoder work', async () => {
    const stages = new ScriptedStages({
      tokens: Array.from({ length: 2000 }, () => idsOf('x')[0]!),
    });
    const { post } = gateway(stages, { LOUPE_GATEWAY_STREAM_WRITE_TIMEOUT_MS: '200' });
    const res = await post(ask('hi', { stream: true, max_tokens: 1000 }));
    expect(res.status).toBe(200);
    // The body is never read: the gateway's writes wait on the client, then give up.
    const until = Date.now() + 10_000;
    while (stages.cancelled === 0) {
      if (Date.now() > until) throw new Error('the stream was never ended');
      await new Promise((r) => setTimeout(r, 20));
    }
    await res.body?.cancel();
  });

  it('generates n choices: the first prefills, the others start at its first token, seeds differ', async () => {
    let release!: () => void;
    const tokens = idsOf('one two');
    const stages = new ScriptedStages({
      tokens,
      firstToken: new Promise<void>((r) => (release = r)),
    });
    const { post } = gateway(stages);
    const pending = Promise.resolve(post(ask('hi', { n: 3, seed: 7, temperature: 1 })));
    while (stages.generated.length === 0) await new Promise((r) => setImmediate(r));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    // Only the first choice runs until it has a token: the decoder then holds the prompt's KV.
    expect(stages.generated).toHaveLength(1);
    release();
    const res = await pending;
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      choices: Array<{ index: number; message: { content: string } }>;
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(body.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(body.choices.map((c) => c.message.content)).toEqual(['one two', 'one two', 'one two']);
    expect(stages.generated.map((g) => g.sampling!.seed)).toEqual(['7', '8', '9']);
    expect(new Set(stages.generated.map((g) => g.promptTokenIds.join()))).toHaveProperty('size', 1);
    expect(body.usage.completion_tokens).toBe(3 * tokens.length);
    expect(body.usage.prompt_tokens).toBe(stages.generated[0]!.promptTokenIds.length);
  });

  it('streams n choices, each with its role chunk, deltas and finish, usage summed', async () => {
    const tokens = idsOf('a b');
    const stages = new ScriptedStages({ tokens });
    const res = await gateway(stages).post(
      ask('hi', { n: 2, stream: true, stream_options: { include_usage: true } }),
    );
    const data = events(await res.text());
    expect(data.at(-1)).toBe('[DONE]');
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    for (const index of [0, 1]) {
      const mine = chunks.filter((c) => c.choices[0]?.index === index);
      expect(mine[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
      expect(mine.map((c) => c.choices[0].delta.content ?? '').join('')).toBe('a b');
      expect(mine.at(-1).choices[0].finish_reason).toBe('stop');
    }
    expect(chunks.at(-1).usage.completion_tokens).toBe(2 * tokens.length);
  });

  it('passes stop_token_ids to the decoder', async () => {
    const stages = new ScriptedStages({ tokens: idsOf('x') });
    expect((await gateway(stages).post(ask('hi', { stop_token_ids: [5, 7] }))).status).toBe(200);
    expect(stages.generated[0]!.stopTokenIds).toEqual([5, 7]);
  });
});
