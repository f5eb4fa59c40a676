// Typed promise helpers over the generated grpc-js clients, for tests.
import {
  credentials,
  Metadata,
  type CallOptions,
  type Client,
  type ServiceError,
} from '@grpc/grpc-js';
import {
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthClient,
  type HealthCheckResponse,
} from '../../proto/gen/grpc/health/v1/health.js';

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

/** The `loupe-reason` trailer of a failed call ('' if there is none). */
export const loupeReason = (error: ServiceError): string =>
  String(error.metadata?.get('loupe-reason')[0] ?? '');

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

/** A health Watch on `service`: the statuses received, and a wait for one of them. */
export function watchHealth(address: string, service: string) {
  const client = healthClient(address);
  const seen: ServingStatus[] = [];
  const stream = client.watch({ service });
  let ended = false;
  const changed = new Set<() => void>();
  const notify = () => changed.forEach((f) => f());
  stream.on('data', (response: HealthCheckResponse) => {
    seen.push(response.status);
    notify();
  });
  // The server ends the stream at shutdown, or its process goes away.
  const end = () => {
    ended = true;
    notify();
  };
  stream.on('end', end);
  stream.on('error', end);
  return {
    seen,
    /** Resolves once `status` was received; rejects if the stream ended without it. */
    until: (wanted: ServingStatus) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (seen.includes(wanted)) resolve();
          else if (ended)
            reject(new Error(`health stream ended; seen ${seen.map((s) => ServingStatus[s])}`));
          else return;
          changed.delete(check);
        };
        changed.add(check);
        check();
      }),
    close: () => {
      stream.cancel();
      client.close();
    },
  };
}
