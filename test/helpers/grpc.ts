// Typed promise helpers over the generated grpc-js clients, for tests.
import {
  credentials,
  Metadata,
  type CallOptions,
  type Client,
  type ServiceError,
} from '@grpc/grpc-js';
import { HealthClient, type HealthCheckResponse } from '../../proto/gen/grpc/health/v1/health.js';

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/** Calls a unary method and resolves with its response (rejects with the ServiceError). */
export function call<Req, Res>(
  client: Client,
  method: UnaryMethod<Req, Res>,
  request: Req,
  {
    metadata = new Metadata(),
    deadlineMs = 30_000,
  }: { metadata?: Metadata; deadlineMs?: number } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(
      client,
      request,
      metadata,
      { deadline: new Date(Date.now() + deadlineMs) },
      (error, response) => (error ? reject(error) : resolve(response)),
    );
  });
}

/** Resolves with the error of a call expected to fail. */
export async function callError<Req, Res>(
  client: Client,
  method: UnaryMethod<Req, Res>,
  request: Req,
  options?: { metadata?: Metadata; deadlineMs?: number },
): Promise<ServiceError> {
  try {
    await call(client, method, request, options);
  } catch (error) {
    return error as ServiceError;
  }
  throw new Error('expected the call to fail, but it succeeded');
}

export const clientOptions = {
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
  'grpc.max_send_message_length': 64 * 1024 * 1024,
};

export function healthClient(address: string): HealthClient {
  return new HealthClient(address, credentials.createInsecure(), clientOptions);
}

export function checkHealth(
  client: HealthClient,
  service = '',
  deadlineMs = 5_000,
): Promise<HealthCheckResponse> {
  return call(client, client.check, { service }, { deadlineMs });
}
