// An encoder whose vision thread dies cannot serve: the calls waiting on it fail with
// UNAVAILABLE (`worker_died`), health goes NOT_SERVING, an error line says `worker_died`, and
// the process exits with 70 for its supervisor to restart it.
//
// How the thread dies here: for real, by the run timeout (LOUPE_ENCODER_RUN_TIMEOUT_MS), the
// production guard against a thread stuck in a model run. At 1 ms any run of a 980×980
// sub-image outlasts it, so the thread is declared stuck and terminated, and the process
// handles it as it handles a thread that crashed or exited (WorkerWatch: the same death).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from '../../proto/gen/grpc/health/v1/health.js';
import { EncoderClient, type EncodeRequest } from '../../proto/gen/loupe/v1/encoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { call, callError, clientOptions, healthClient } from '../../test/helpers/grpc.js';
import {
  builtService,
  ephemeralPorts,
  startServiceProcess,
  stopServiceProcesses,
} from '../../test/helpers/service-process.js';
import { writeTinyModel } from '../model/index.js';

const script = builtService('encoder');
const work = mkdtempSync(join(tmpdir(), 'loupe-encoder-death-'));
const modelDir = join(work, 'tiny-seed0');

const reason = (error: ServiceError) => String(error.metadata.get('loupe-reason')[0] ?? '');

/** One seeded-noise sub-image of `side` × `side`, as the wire carries it. */
function request(side: number, seed: number): EncodeRequest {
  let a = seed >>> 0;
  const data = Buffer.alloc(3 * side * side);
  for (let i = 0; i < data.length; i++) {
    a = (Math.imul(a, 1103515245) + 12345) >>> 0;
    data[i] = a >>> 24;
  }
  return {
    subImages: [
      {
        height: side,
        width: side,
        pixels: { dtype: Dtype.DTYPE_UINT8, shape: [3, side, side], data },
      },
    ],
    contentHash: Buffer.alloc(0),
    split: false,
    outputDtype: Dtype.DTYPE_FLOAT32,
  };
}

/** A health Watch on `service`: the statuses received, and a wait for one of them. */
function watchHealth(address: string, service: string) {
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

beforeAll(() => writeTinyModel({ out: modelDir, seed: 0 }));
afterEach(() => stopServiceProcesses());
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('encoder whose vision thread dies', () => {
  it('fails the calls waiting on it with UNAVAILABLE, goes NOT_SERVING and exits with 70', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_ENCODER_RUN_TIMEOUT_MS: '1',
    });
    const encoder = new EncoderClient(
      service.grpcAddress,
      credentials.createInsecure(),
      clientOptions,
    );
    const health = watchHealth(service.grpcAddress, 'loupe.v1.Encoder');
    try {
      await health.until(ServingStatus.SERVING);
      // What needs no model run still works.
      expect((await call(encoder, encoder.info, {})).maxSide).toBe(980);

      const [first, second] = await Promise.all([
        callError(encoder, encoder.encode, request(980, 1)),
        callError(encoder, encoder.encode, request(980, 2)),
      ]);
      expect(first.code).toBe(status.UNAVAILABLE);
      expect(reason(first)).toBe('worker_died');
      expect(first.details).toMatch(
        /^the vision model cannot run: the vision thread stalled: no answer for \d+ ms; the encoder is exiting to be restarted$/,
      );
      // The other call failed with it, or found the server already going away.
      expect(second.code).toBe(status.UNAVAILABLE);

      await health.until(ServingStatus.NOT_SERVING);
      expect(health.seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
      const died = await service.waitForLog((e) => e.event === 'worker_died');
      expect(died).toMatchObject({
        level: 'error',
        service: 'encoder',
        worker: 'the vision thread',
        setting: 'LOUPE_ENCODER_RUN_TIMEOUT_MS',
        exitingWith: 70,
      });
      expect(died.stalledMs).toEqual(expect.any(Number));
      expect(await service.exited).toBe(70);
    } finally {
      health.close();
      encoder.close();
    }
  });
});
