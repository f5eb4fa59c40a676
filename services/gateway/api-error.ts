// The gateway's errors, in OpenAI's error shape: every refusal the API gives is an ApiError,
// built from an options object so each throw says what it means (see docs/gateway.md).
import type { z } from 'zod';

export type ErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable';

export type ErrorStatus = 400 | 401 | 403 | 404 | 405 | 413 | 415 | 429 | 500 | 503;

export interface ApiErrorOptions {
  status: ErrorStatus;
  message: string;
  /** OpenAI's error type; by default the one of the status. */
  type?: ErrorType;
  /** A stable, machine-readable code (`context_length_exceeded`, `rate_limit_exceeded`...). */
  code?: string | null;
  /** The request parameter at fault, as a path (`messages[0].content`). */
  param?: string | null;
  /** Seconds before a retry can succeed: sent as Retry-After (429 and 503). */
  retryAfter?: number;
}

const TYPE_OF_STATUS: Record<ErrorStatus, ErrorType> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'invalid_request_error',
  405: 'invalid_request_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  429: 'rate_limit_error',
  500: 'server_error',
  503: 'service_unavailable',
};

export class ApiError extends Error {
  override readonly name = 'ApiError';
  readonly status: ErrorStatus;
  readonly type: ErrorType;
  readonly code: string | null;
  readonly param: string | null;
  readonly retryAfter: number | undefined;

  constructor(o: ApiErrorOptions) {
    super(o.message);
    this.status = o.status;
    this.type = o.type ?? TYPE_OF_STATUS[o.status];
    this.code = o.code ?? null;
    this.param = o.param ?? null;
    this.retryAfter = o.retryAfter;
  }

  body() {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }
}

/** A 400 about the request's content. */
export const invalid = (
  message: string,
  param: string | null = null,
  code: string | null = null,
): ApiError => new ApiError({ status: 400, message, code, param });

/** At most `max` characters of a client's text, for messages that quote it. */
export const clip = (text: string, max = 64): string =>
  text.length > max ? `${text.slice(0, max)}…` : text;

/** A 429 whose wait is `retryAfter` seconds. */
export const limited = (message: string, code: string, retryAfter: number): ApiError =>
  new ApiError({ status: 429, message, code, retryAfter });

/** The first zod issue as an OpenAI 400 naming the parameter. */
export function fromZod(error: z.ZodError): ApiError {
  const issue = error.issues[0]!;
  const param = issue.path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .replace(/^\./, '');
  return invalid(`\`${param || 'body'}\`: ${issue.message}`, param || null, 'invalid_value');
}
