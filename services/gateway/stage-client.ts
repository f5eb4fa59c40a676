// What the gateway needs from the three internal stages, as one interface: `Stages`
// (stages.ts) implements it over gRPC, and the in-process app tests script it. The request
// pipeline (docs/gateway.md) only ever sees this interface.
import type { ServiceError } from '@grpc/grpc-js';
import type {
  DecoderInfo,
  GenerateRequest,
  GenerateResponse,
} from '../../proto/gen/loupe/v1/decoder.js';
import type { EncodeRequest, EncodeResponse } from '../../proto/gen/loupe/v1/encoder.js';
import type {
  PreprocessRequest,
  PreprocessResponse,
} from '../../proto/gen/loupe/v1/preprocessor.js';

/**
 * What one client request hands to every stage call it makes: the signal that cancels them,
 * the request id they carry, and the request's deadline. (A stage's handler gets the other
 * side of such a call, the runtime's HandlerContext.)
 */
export interface CallContext {
  signal: AbortSignal;
  requestId: string;
  /** Absolute deadline of the whole request, ms since the epoch. */
  deadline: number;
}

/** A decoder's Generate stream: its messages in order; `cancel` ends it early. */
export interface GenerationStream extends AsyncIterable<GenerateResponse> {
  cancel(): void;
}

export interface StageClient {
  preprocess(request: PreprocessRequest, ctx: CallContext): Promise<PreprocessResponse>;
  /** The encoder's cached embeddings for a sub-image hash, or undefined when it has none. */
  lookup(
    contentHash: Buffer,
    split: boolean,
    ctx: CallContext,
  ): Promise<EncodeResponse | undefined>;
  encode(request: EncodeRequest, ctx: CallContext): Promise<EncodeResponse>;
  decoderInfo(ctx: CallContext): Promise<DecoderInfo>;
  /** Starts Generate on a decoder; the stream ends early when `ctx.signal` aborts. */
  generate(request: GenerateRequest, ctx: CallContext): GenerationStream;
  /** Per stage, whether some endpoint reports SERVING within `timeoutMs`. */
  ready(timeoutMs: number): Promise<Record<string, boolean>>;
}

/** A stage's gRPC failure; stage-errors.ts maps it to the client's HTTP error. */
export class StageError extends Error {
  override readonly name = 'StageError';
  constructor(
    readonly stage: string,
    readonly error: ServiceError,
  ) {
    super(`${stage}: ${error.details || error.message}`);
  }
}
