// The errors a gRPC handler may throw. Anything else becomes INTERNAL with a generic message
// (and is logged with its stack), so internals never leak to callers.
import { status, type StatusObject, Metadata } from '@grpc/grpc-js';

export { status as GrpcStatus };

export class ServiceError extends Error {
  override readonly name = 'ServiceError';
  constructor(
    readonly code: status,
    message: string,
    /** A stable machine-readable reason, sent as the `loupe-reason` trailer. */
    readonly reason?: string,
  ) {
    super(message);
  }
}

export const invalidArgument = (message: string, reason?: string) =>
  new ServiceError(status.INVALID_ARGUMENT, message, reason);
export const resourceExhausted = (message: string, reason?: string) =>
  new ServiceError(status.RESOURCE_EXHAUSTED, message, reason);
/** A full queue's refusal (QueueFullError, queue-full.ts), as the caller gets it. */
export const queueFull = (message: string) => resourceExhausted(message, 'queue_full');
export const notFound = (message: string, reason?: string) =>
  new ServiceError(status.NOT_FOUND, message, reason);
export const unavailable = (message: string, reason?: string) =>
  new ServiceError(status.UNAVAILABLE, message, reason);
/** A failure of the service itself, with a message safe to show (no stack, no internals). */
export const internal = (message: string, reason?: string) =>
  new ServiceError(status.INTERNAL, message, reason);
export const deadlineExceeded = (message: string) =>
  new ServiceError(status.DEADLINE_EXCEEDED, message);
export const cancelled = (message: string) => new ServiceError(status.CANCELLED, message);

/** A failure's label for metrics: its `loupe-reason`, else its status name (`cancelled`, ...). */
export function failureReason(error: unknown): string {
  if (error instanceof ServiceError) return error.reason ?? status[error.code].toLowerCase();
  return 'internal';
}

/** Maps anything thrown by a handler to the status sent to the caller. */
export function toStatus(
  error: unknown,
): Partial<StatusObject> & { code: status; details: string } {
  if (error instanceof ServiceError) {
    const metadata = new Metadata();
    if (error.reason) metadata.set('loupe-reason', error.reason);
    return { code: error.code, details: error.message, metadata };
  }
  return { code: status.INTERNAL, details: 'internal error' };
}
