// The gateway's clients of the three internal stages. Each stage may have several endpoints;
// a call goes to the one with the fewest calls outstanding from this gateway, except the
// encoder's calls for an image, which go to that image's own encoder (rendezvous hashing of
// its content hash) so that the encoders' caches do not hold copies of each other. Preprocess,
// Lookup and Encode are idempotent: on UNAVAILABLE they are retried once on another endpoint.
// Every call carries a deadline, the trace context and the request id, and is cancelled when
// the request's signal aborts (the client went away). The messages that carry tensors go
// through the tensor codec (services/runtime/tensor-codec.ts), as on the stages' side: a
// tensor received is a view of its message, and one sent is copied once into its message.
import { createHash } from 'node:crypto';
import {
  makeGenericClientConstructor,
  Metadata,
  status,
  type Client,
  type ClientReadableStream,
  type ServiceError,
} from '@grpc/grpc-js';
import {
  HealthCheckResponse_ServingStatus,
  HealthClient,
} from '../../proto/gen/grpc/health/v1/health.js';
import {
  DecoderClient,
  type DecoderInfo,
  type GenerateRequest,
  type GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import {
  EncoderClient,
  type EncodeRequest,
  type EncodeResponse,
  type EncoderInfo,
} from '../../proto/gen/loupe/v1/encoder.js';
import {
  PreprocessorClient,
  type PreprocessRequest,
  type PreprocessResponse,
} from '../../proto/gen/loupe/v1/preprocessor.js';
import type { KubeConfig } from '@kubernetes/client-node';
import {
  clientChannelOptions,
  clientTransport,
  DecoderCodecService,
  EncoderCodecService,
  PreprocessorCodecService,
  tokenInterceptor,
  traceContextInterceptor,
  type ClientTls,
  type ClientTransport,
  type Logger,
} from '../runtime/index.js';
import { watchEndpoints, type EndpointSource, type Watcher } from './discovery.js';
import { StageError, type CallContext, type StageClient } from './stage-client.js';

// The generated clients' constructors, with the tensor codec.
const PreprocessorCodecClient = makeGenericClientConstructor(
  PreprocessorCodecService,
  'loupe.v1.Preprocessor',
) as unknown as typeof PreprocessorClient;
const EncoderCodecClient = makeGenericClientConstructor(
  EncoderCodecService,
  'loupe.v1.Encoder',
) as unknown as typeof EncoderClient;
const DecoderCodecClient = makeGenericClientConstructor(
  DecoderCodecService,
  'loupe.v1.Decoder',
) as unknown as typeof DecoderClient;

interface Endpoint<C> {
  address: string;
  client: C;
  health: HealthClient;
  outstanding: number;
  /** The endpoint's own report of its load (the decoder's Load), when polled. */
  load?: { waiting: number; running: number; kvCacheUsage: number };
  /** The last load poll failed (polled endpoints only). */
  loadFailed?: boolean;
}

/**
 * The endpoints of one stage, kept current by a discovery source (discovery.ts); a call goes
 * to the endpoint with the lowest score: calls outstanding from this gateway, plus, for the
 * decoder, the sequences it reports waiting and its KV-cache usage.
 */
export class EndpointPool<C extends Client> {
  endpoints: Endpoint<C>[] = [];

  constructor(
    readonly stage: string,
    private readonly make: (address: string) => C,
    private readonly maxMessageBytes: number,
    /** Credentials (TLS or plaintext) for the health clients, as the stage's clients have. */
    private readonly transport: ClientTransport = clientTransport(),
  ) {}

  /** Replaces the endpoint list; clients of endpoints still listed are kept. */
  setAddresses(addresses: readonly string[]): void {
    const keep = new Map(this.endpoints.map((e) => [e.address, e]));
    this.endpoints = addresses.map(
      (address) =>
        keep.get(address) ?? {
          address,
          client: this.make(address),
          health: new HealthClient(address, this.transport.credentials, {
            ...clientChannelOptions(this.maxMessageBytes),
            ...this.transport.options,
          }),
          outstanding: 0,
        },
    );
    // Calls in progress on a dropped endpoint finish; its channel closes after them.
    for (const [address, e] of keep) {
      if (!addresses.includes(address)) {
        e.client.close();
        e.health.close();
      }
    }
  }

  #score(e: Endpoint<C>): number {
    // An endpoint whose load report failed goes last: it is likely down, and failing fast
    // would otherwise keep its outstanding count, and so its score, at zero.
    if (e.loadFailed) return 1e9 + e.outstanding;
    return e.outstanding + (e.load ? e.load.waiting + e.load.kvCacheUsage : 0);
  }

  /**
   * The endpoint for a call: with a `key` (an image's content hash), the key's own endpoint by
   * rendezvous hashing — each key always goes to the same encoder, so N encoders hold N
   * different caches rather than N copies of one, and an endpoint that joins or leaves moves
   * only its share of keys; without, the least loaded. `exclude` (a failed first try) gives
   * the next choice.
   */
  pick(exclude?: Endpoint<C>, key?: Buffer): Endpoint<C> {
    if (this.endpoints.length === 0) {
      const error = Object.assign(new Error(`no ${this.stage} endpoint is known`), {
        code: status.UNAVAILABLE,
        details: `no ${this.stage} endpoint is known (yet)`,
        metadata: new Metadata(),
      });
      throw new StageError(this.stage, error as ServiceError);
    }
    const candidates = this.endpoints.filter((e) => e !== exclude);
    const pool = candidates.length > 0 ? candidates : this.endpoints;
    if (key !== undefined) {
      let best = pool[0]!;
      let bestWeight = -1n;
      for (const e of pool) {
        const weight = createHash('sha256')
          .update(key)
          .update(e.address)
          .digest()
          .readBigUInt64BE(0);
        if (weight > bestWeight) [best, bestWeight] = [e, weight];
      }
      return best;
    }
    return pool.reduce((best, e) => (this.#score(e) < this.#score(best) ? e : best));
  }

  /** Whether some endpoint reports SERVING for `service`, within `timeoutMs`. */
  async serving(service: string, timeoutMs: number): Promise<boolean> {
    const checks = this.endpoints.map(
      (e) =>
        new Promise<boolean>((resolve) =>
          e.health.check(
            { service },
            new Metadata(),
            { deadline: new Date(Date.now() + timeoutMs) },
            (error, response) =>
              resolve(!error && response.status === HealthCheckResponse_ServingStatus.SERVING),
          ),
        ),
    );
    return (await Promise.all(checks)).some(Boolean);
  }

  close(): void {
    for (const e of this.endpoints) {
      e.client.close();
      e.health.close();
    }
    this.endpoints = [];
  }
}

type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: { deadline: Date },
  callback: (error: ServiceError | null, response: Res) => void,
) => { cancel(): void };

function unaryCall<C extends Client, Req, Res>(
  endpoint: Endpoint<C>,
  method: (client: C) => Unary<Req, Res>,
  request: Req,
  ctx: CallContext,
): Promise<Res> {
  const metadata = new Metadata();
  metadata.set('x-request-id', ctx.requestId);
  endpoint.outstanding++;
  return new Promise<Res>((resolve, reject) => {
    const call = method(endpoint.client).call(
      endpoint.client,
      request,
      metadata,
      { deadline: new Date(ctx.deadline) },
      (error, response) => {
        endpoint.outstanding--;
        ctx.signal.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve(response);
      },
    );
    const onAbort = () => call.cancel();
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    if (ctx.signal.aborted) onAbort();
  });
}

/**
 * A unary call, retried once on another endpoint when the first answers UNAVAILABLE; `key`
 * routes by content (EndpointPool.pick).
 */
async function idempotent<C extends Client, Req, Res>(
  pool: EndpointPool<C>,
  method: (client: C) => Unary<Req, Res>,
  request: Req,
  ctx: CallContext,
  key?: Buffer,
): Promise<Res> {
  const first = pool.pick(undefined, key);
  try {
    return await unaryCall(first, method, request, ctx);
  } catch (error) {
    const e = error as ServiceError;
    if (e.code !== status.UNAVAILABLE || ctx.signal.aborted) throw new StageError(pool.stage, e);
    try {
      return await unaryCall(pool.pick(first, key), method, request, ctx);
    } catch (retryError) {
      throw new StageError(pool.stage, retryError as ServiceError);
    }
  }
}

export interface StageSources {
  preprocessor: EndpointSource;
  encoder: EndpointSource;
  decoder: EndpointSource;
}

/** The stages over gRPC, endpoints found by discovery (discovery.ts). */
export class Stages implements StageClient {
  readonly preprocessor: EndpointPool<PreprocessorClient>;
  readonly encoder: EndpointPool<EncoderClient>;
  readonly decoder: EndpointPool<DecoderClient>;

  readonly #watchers: Watcher[];
  readonly #loadTimer: NodeJS.Timeout;

  constructor(
    sources: StageSources,
    maxMessageBytes: number,
    {
      logger,
      kubeConfig,
      loadIntervalMs = 1000,
      token,
      tls,
    }: {
      logger: Logger;
      kubeConfig?: KubeConfig;
      loadIntervalMs?: number;
      /** The internal token sent with every call (LOUPE_GRPC_TOKEN). */
      token?: string;
      /** mTLS to the stages (LOUPE_GRPC_TLS_*); unset: plaintext. */
      tls?: ClientTls;
    },
  ) {
    const transport = clientTransport(tls, logger);
    const options = {
      ...clientChannelOptions(maxMessageBytes),
      ...transport.options,
      interceptors: [traceContextInterceptor, ...(token ? [tokenInterceptor(token)] : [])],
    };
    const channel = transport.credentials;
    this.preprocessor = new EndpointPool(
      'preprocessor',
      (a) => new PreprocessorCodecClient(a, channel, options),
      maxMessageBytes,
      transport,
    );
    this.encoder = new EndpointPool(
      'encoder',
      (a) => new EncoderCodecClient(a, channel, options),
      maxMessageBytes,
      transport,
    );
    this.decoder = new EndpointPool(
      'decoder',
      (a) => new DecoderCodecClient(a, channel, options),
      maxMessageBytes,
      transport,
    );
    this.#watchers = (['preprocessor', 'encoder', 'decoder'] as const).map((stage) =>
      watchEndpoints(sources[stage], (addresses) => this[stage].setAddresses(addresses), {
        logger,
        ...(kubeConfig ? { kubeConfig } : {}),
      }),
    );
    // The decoder's own load report steers routing between decoders.
    this.#loadTimer = setInterval(() => {
      for (const e of this.decoder.endpoints) {
        e.client.load(
          {},
          new Metadata(),
          { deadline: new Date(Date.now() + loadIntervalMs) },
          (error, load) => {
            e.load = error ? undefined : load;
            e.loadFailed = error !== null;
          },
        );
      }
    }, loadIntervalMs);
    this.#loadTimer.unref();
  }

  preprocess(request: PreprocessRequest, ctx: CallContext): Promise<PreprocessResponse> {
    return idempotent(
      this.preprocessor,
      (c) => c.preprocess as Unary<PreprocessRequest, PreprocessResponse>,
      request,
      ctx,
    );
  }

  /** The encoder's cached embeddings, or undefined when it has none. */
  async lookup(
    contentHash: Buffer,
    split: boolean,
    ctx: CallContext,
  ): Promise<EncodeResponse | undefined> {
    try {
      return await idempotent(
        this.encoder,
        (c) =>
          c.lookup as Unary<
            { contentHash: Buffer; split: boolean; outputDtype: number },
            EncodeResponse
          >,
        { contentHash, split, outputDtype: 0 },
        ctx,
        contentHash,
      );
    } catch (error) {
      if (error instanceof StageError && error.error.code === status.NOT_FOUND) return undefined;
      throw error;
    }
  }

  encode(request: EncodeRequest, ctx: CallContext): Promise<EncodeResponse> {
    return idempotent(
      this.encoder,
      (c) => c.encode as Unary<EncodeRequest, EncodeResponse>,
      request,
      ctx,
      request.contentHash.length > 0 ? request.contentHash : undefined,
    );
  }

  encoderInfo(ctx: CallContext): Promise<EncoderInfo> {
    return idempotent(this.encoder, (c) => c.info as Unary<object, EncoderInfo>, {}, ctx);
  }

  decoderInfo(ctx: CallContext): Promise<DecoderInfo> {
    return idempotent(this.decoder, (c) => c.info as Unary<object, DecoderInfo>, {}, ctx);
  }

  /** Starts Generate on the least busy decoder; the stream ends early when `ctx` aborts. */
  generate(request: GenerateRequest, ctx: CallContext): ClientReadableStream<GenerateResponse> {
    const endpoint = this.decoder.pick();
    const metadata = new Metadata();
    metadata.set('x-request-id', ctx.requestId);
    endpoint.outstanding++;
    const stream = endpoint.client.generate(request, metadata, {
      deadline: new Date(ctx.deadline),
    });
    const onAbort = () => stream.cancel();
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    if (ctx.signal.aborted) queueMicrotask(onAbort);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      endpoint.outstanding--;
      ctx.signal.removeEventListener('abort', onAbort);
    };
    stream.on('end', finish);
    stream.on('error', finish);
    stream.on('close', finish);
    return stream;
  }

  async ready(timeoutMs: number): Promise<Record<string, boolean>> {
    const [preprocessor, encoder, decoder] = await Promise.all([
      this.preprocessor.serving('loupe.v1.Preprocessor', timeoutMs),
      this.encoder.serving('loupe.v1.Encoder', timeoutMs),
      this.decoder.serving('loupe.v1.Decoder', timeoutMs),
    ]);
    return { preprocessor, encoder, decoder };
  }

  close(): void {
    clearInterval(this.#loadTimer);
    for (const w of this.#watchers) w.stop();
    this.preprocessor.close();
    this.encoder.close();
    this.decoder.close();
  }
}
