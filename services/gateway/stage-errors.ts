// One table from a stage's gRPC status and `loupe-reason` trailer to the HTTP status and
// OpenAI error code the client sees. Messages about the client's input are passed on; what
// only concerns the deployment (connection errors, which name internal addresses and ports)
// is logged, never sent.
import { status as grpcStatus } from '@grpc/grpc-js';
import type { Logger } from '../runtime/index.js';
import { ApiError, invalid, limited } from './api-error.js';
import type { StageError } from './stage-client.js';

/** `loupe-reason` values with an OpenAI error code of their own; others are `invalid_value`. */
const CODES: Readonly<Record<string, string>> = {
  context_length_exceeded: 'context_length_exceeded',
};

/** The reason trailer a stage sent with its status, '' when none. */
export function stageReason(error: StageError): string {
  const value = error.error.metadata?.get('loupe-reason')[0];
  return typeof value === 'string' ? value : '';
}

export function stageFailure(error: StageError, logger?: Logger): ApiError {
  const { code, details } = error.error;
  const reason = stageReason(error);
  switch (code) {
    case grpcStatus.INVALID_ARGUMENT:
      return invalid(`${error.stage}: ${details}`, null, CODES[reason] ?? 'invalid_value');
    case grpcStatus.RESOURCE_EXHAUSTED:
      return limited(`the ${error.stage} is at capacity: ${details}`, 'overloaded', 1);
    case grpcStatus.UNAVAILABLE:
    case grpcStatus.DEADLINE_EXCEEDED:
      logger?.warn({ stage: error.stage, code, details, reason }, 'stage unavailable');
      return new ApiError({
        status: 503,
        message: `the ${error.stage} is unavailable${reason ? ` (${reason})` : ''}; retry shortly`,
        code: 'stage_unavailable',
        retryAfter: 5,
      });
    default:
      logger?.error({ stage: error.stage, code, details, reason }, 'stage failed');
      return new ApiError({
        status: 500,
        message: `the ${error.stage} failed${reason ? ` (${reason})` : ''}`,
        code: 'stage_failed',
      });
  }
}
