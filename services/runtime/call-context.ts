import type { Metadata } from '@grpc/grpc-js';
import type { Logger } from './logger.js';

/** What a handler gets besides its request. */
export interface CallContext {
  /** Aborted when the caller cancels, the deadline passes, or the server is forced down. */
  signal: AbortSignal;
  /** Absolute deadline, ms since the epoch; undefined when the caller set none. */
  deadline: number | undefined;
  /** Carries service, method, request id and trace id. */
  logger: Logger;
  requestId: string;
  metadata: Metadata;
}
