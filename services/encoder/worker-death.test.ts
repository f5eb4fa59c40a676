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
import { credentials } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EncoderClient, type EncodeRequest } from '../../proto/gen/loupe/v1/encoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { call, callError, clientOptions } from '../../test/helpers/grpc.js';
import {
  builtService,
  ephemeralPorts,
  stopServiceProcesses,
} from '../../test/helpers/service-process.js';
import { expectWorkerDeath } from '../../test/helpers/worker-death.js';
import { writeTinyModel } from '../model/index.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-encoder-death-'));
const modelDir = join(work, 'tiny-seed0');

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

beforeAll(() => writeTinyModel({ out: modelDir, seed: 0 }));
afterEach(() => stopServiceProcesses());
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('encoder whose vision thread dies', () => {
  it('fails the calls waiting on it with UNAVAILABLE, goes NOT_SERVING and exits with 70', async () => {
    await expectWorkerDeath({
      script: builtService('encoder'),
      env: {
        ...ephemeralPorts('ENCODER'),
        LOUPE_MODEL_DIR: modelDir,
        LOUPE_ENCODER_THREADS: '1',
        LOUPE_ENCODER_RUN_TIMEOUT_MS: '1',
      },
      healthService: 'loupe.v1.Encoder',
      client: (address) => new EncoderClient(address, credentials.createInsecure(), clientOptions),
      run: async (encoder) => {
        // What needs no model run still works.
        expect((await call(encoder, encoder.info, {})).maxSide).toBe(980);
        return Promise.all([
          callError(encoder, encoder.encode, request(980, 1)),
          callError(encoder, encoder.encode, request(980, 2)),
        ]);
      },
      details:
        /^the vision model cannot run: the vision thread stalled: no answer for \d+ ms; the encoder is exiting to be restarted$/,
      log: {
        service: 'encoder',
        worker: 'the vision thread',
        setting: 'LOUPE_ENCODER_RUN_TIMEOUT_MS',
      },
    });
  });
});
