// The drill of a stage whose model thread dies (docs/architecture.md): the calls waiting on it
// fail with UNAVAILABLE (`worker_died`), health goes NOT_SERVING, an error line says
// `worker_died`, and the process exits with 70 for its supervisor to restart it. The encoder
// and the decoder run the same drill on their own thread and calls.
import { status, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'vitest';
import { HealthCheckResponse_ServingStatus as ServingStatus } from '../../proto/gen/grpc/health/v1/health.js';
import { loupeReason, watchHealth } from './grpc.js';
import { startServiceProcess } from './service-process.js';

export interface WorkerDeathDrill<C extends { close(): void }> {
  /** The built service (builtService(...)) and its environment, set up for its thread to die. */
  script: string;
  env: Record<string, string>;
  /** The gRPC service whose health is watched, e.g. loupe.v1.Encoder. */
  healthService: string;
  client: (address: string) => C;
  /**
   * Once health says SERVING: what still works, then two concurrent calls that need the
   * thread; resolves with the error of each (and may check more of what they got).
   */
  run: (client: C) => Promise<[ServiceError | undefined, ServiceError | undefined]>;
  /** The first call's message. */
  details: RegExp;
  /** What the `worker_died` log line names. */
  log: { service: string; worker: string; setting: string };
}

/** Starts the service, runs the drill, and checks each step of the death. */
export async function expectWorkerDeath<C extends { close(): void }>(
  drill: WorkerDeathDrill<C>,
): Promise<void> {
  const service = await startServiceProcess(drill.script, drill.env);
  const client = drill.client(service.grpcAddress);
  const health = watchHealth(service.grpcAddress, drill.healthService);
  try {
    await health.until(ServingStatus.SERVING);
    const [first, second] = await drill.run(client);
    expect(first?.code).toBe(status.UNAVAILABLE);
    expect(loupeReason(first!)).toBe('worker_died');
    expect(first!.details).toMatch(drill.details);
    // The other call failed with it, or found the server already going away.
    expect(second?.code).toBe(status.UNAVAILABLE);

    await health.until(ServingStatus.NOT_SERVING);
    expect(health.seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    const died = await service.waitForLog((e) => e.event === 'worker_died');
    expect(died).toMatchObject({ level: 'error', ...drill.log, exitingWith: 70 });
    expect(died.stalledMs).toEqual(expect.any(Number));
    expect(await service.exited).toBe(70);
  } finally {
    health.close();
    client.close();
  }
}
