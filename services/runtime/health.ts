// The standard grpc.health.v1 service: Check, List and Watch over a status per service name
// ("" is the whole server).
import type { ServerWritableStream, ServerUnaryCall, sendUnaryData } from '@grpc/grpc-js';
import { status as grpcStatus } from '@grpc/grpc-js';
import {
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckRequest,
  type HealthCheckResponse,
  type HealthListRequest,
  type HealthListResponse,
  type HealthServer,
} from '../../proto/gen/grpc/health/v1/health.js';

export { ServingStatus };

export class HealthRegistry {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Map<
    string,
    Set<ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>
  >();

  set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const call of this.watchers.get(service) ?? []) call.write({ status });
  }

  /** Sets every known service (and the server, "") to `status`. */
  setAll(status: ServingStatus): void {
    for (const service of new Set(['', ...this.statuses.keys()])) this.set(service, status);
  }

  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /** Ends open Watch streams (at shutdown, so they don't hold the server open). */
  closeWatchers(): void {
    for (const calls of this.watchers.values()) for (const call of calls) call.end();
    this.watchers.clear();
  }

  readonly implementation: HealthServer = {
    check: (
      call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>,
      callback: sendUnaryData<HealthCheckResponse>,
    ) => {
      const status = this.statuses.get(call.request.service);
      if (status === undefined) {
        callback({
          code: grpcStatus.NOT_FOUND,
          details: `unknown service "${call.request.service}"`,
        });
        return;
      }
      callback(null, { status });
    },
    list: (
      _call: ServerUnaryCall<HealthListRequest, HealthListResponse>,
      callback: sendUnaryData<HealthListResponse>,
    ) => {
      const statuses: Record<string, HealthCheckResponse> = {};
      for (const [service, status] of this.statuses) statuses[service] = { status };
      callback(null, { statuses });
    },
    watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
      const service = call.request.service;
      let set = this.watchers.get(service);
      if (!set) this.watchers.set(service, (set = new Set()));
      set.add(call);
      call.write({ status: this.statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN });
      call.on('cancelled', () => set.delete(call));
      call.on('close', () => set.delete(call));
    },
  };
}
