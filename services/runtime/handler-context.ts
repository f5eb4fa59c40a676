import type { Metadata } from '@grpc/grpc-js';
import type { Logger } from './logger.js';

/**
 * What a gRPC handler gets besides its request: the incoming call's signal, deadline, logger
 * and metadata. (The gateway's CallContext, services/gateway/stage-client.ts, is the other
 * side: what one HTTP request hands to the stage calls it makes.)
 */
export interface HandlerContext {
  /** Aborted when the caller cancels, the deadline passes, or the server is forced down. */
  signal: AbortSignal;
  /** Absolute deadline, ms since the epoch; undefined when the caller set none. */
  deadline: number | undefined;
  /** Carries service, method, request id and trace id. */
  logger: Logger;
  requestId: string;
  metadata: Metadata;
}
