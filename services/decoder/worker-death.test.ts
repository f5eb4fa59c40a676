// When the decoder's model cannot work, it says so.
//
// A failed step fails the sequences in it with INTERNAL (`step_failed`, and the model's
// message), and the engine goes on: the next request gets what it would get alone. The fault
// is injected at the model runner (LOUPE_DECODER_TEST_FAULT_POSITION): the real one this test
// used, a context past the model's rotary positions, is refused at start now (capacity.ts).
//
// A decoder whose engine thread dies cannot serve: its requests fail with UNAVAILABLE
// (`worker_died`), health goes NOT_SERVING, an error line says `worker_died`, and the process
// exits with 70 for its supervisor to restart it. The thread dies for real, by the step
// timeout (LOUPE_DECODER_STEP_TIMEOUT_MS), the production guard against a thread stuck in a
// model run: at 1 ms a prefill of 2000 tokens outlasts it, so the thread is declared stuck and
// terminated, and the process handles it as it handles a thread that crashed or exited
// (WorkerWatch: the same death).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus as ServingStatus } from '../../proto/gen/grpc/health/v1/health.js';
import { DecoderClient } from '../../proto/gen/loupe/v1/decoder.js';
import {
  checkHealth,
  clientOptions,
  healthClient,
  loupeReason as reason,
} from '../../test/helpers/grpc.js';
import {
  builtService,
  ephemeralPorts,
  startServiceProcess,
  stopServiceProcesses,
} from '../../test/helpers/service-process.js';
import { expectWorkerDeath } from '../../test/helpers/worker-death.js';
import { writeTinyModel } from '../model/index.js';
import { loadGoldenCase } from '../model/language-model/goldens.test-helper.js';
import { generate, generateRequest } from './generate.test-helper.js';

const script = builtService('decoder');
const work = mkdtempSync(join(tmpdir(), 'loupe-decoder-death-'));
const modelDir = join(work, 'tiny-seed0');

const request = (promptTokenIds: number[], maxNewTokens: number) =>
  generateRequest(promptTokenIds, { maxNewTokens });
const client = (address: string) =>
  new DecoderClient(address, credentials.createInsecure(), clientOptions);

/** A text prompt of `n` ordinary tokens (no <image>, no end of sequence). */
const prompt = (n: number) => Array.from({ length: n }, (_, i) => 3 + (i % 400));

beforeAll(() => writeTinyModel({ out: modelDir, seed: 0 }));
afterEach(() => stopServiceProcesses());
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('decoder whose step fails', () => {
  it('fails that request with INTERNAL step_failed and serves the next one', async () => {
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('DECODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_DECODER_THREADS: '1',
      LOUPE_DECODER_MAX_CONTEXT: '4096',
      LOUPE_DECODER_MAX_NEW_TOKENS: '32',
      LOUPE_DECODER_MAX_PREFILL_TOKENS: '1024',
      LOUPE_DECODER_TEST_FAULT_POSITION: '2048',
    });
    const decoder = client(service.grpcAddress);
    const health = healthClient(service.grpcAddress);
    try {
      // Positions 2048 on fail: the third prefill chunk does.
      const failed = await generate(decoder, request(prompt(2100), 4));
      expect(failed.tokens).toEqual([]);
      expect(failed.error?.code).toBe(status.INTERNAL);
      expect(reason(failed.error!)).toBe('step_failed');
      expect(failed.error?.details).toMatch(/^a decoder step failed: \S/);

      // The engine goes on: a request afterwards gets exactly what it gets alone.
      const golden = loadGoldenCase('tiny-text-only');
      const next = await generate(decoder, request(golden.inputIds, 32));
      expect(next.error).toBeUndefined();
      expect(next.tokens.map((t) => t.id)).toEqual(golden.generatedIds.slice(0, 32));
      expect(next.finished).toBeDefined();

      expect((await checkHealth(health, 'loupe.v1.Decoder')).status).toBe(ServingStatus.SERVING);
      expect(service.lines.some((l) => l.includes('worker_died'))).toBe(false);
      expect(await service.stop()).toBe(0);
    } finally {
      health.close();
      decoder.close();
    }
  });
});

describe('decoder whose engine thread dies', () => {
  it('fails its requests with UNAVAILABLE, goes NOT_SERVING and exits with 70', async () => {
    await expectWorkerDeath({
      script,
      env: {
        ...ephemeralPorts('DECODER'),
        LOUPE_MODEL_DIR: modelDir,
        LOUPE_DECODER_THREADS: '1',
        LOUPE_DECODER_MAX_CONTEXT: '4096',
        LOUPE_DECODER_MAX_PREFILL_TOKENS: '2048',
        LOUPE_DECODER_STEP_TIMEOUT_MS: '1',
        // The step budget must stay below the watchdog's limit (config.ts): none here.
        LOUPE_DECODER_MAX_STEP_MS: '0',
      },
      healthService: 'loupe.v1.Decoder',
      client,
      run: async (decoder) => {
        const [first, second] = await Promise.all([
          generate(decoder, request(prompt(2000), 8)),
          generate(decoder, request(prompt(2000), 8)),
        ]);
        expect(first.tokens).toEqual([]);
        return [first.error, second.error];
      },
      details:
        /^the text model cannot run: the decoder engine thread stalled: no answer for \d+ ms; the decoder is exiting to be restarted$/,
      log: {
        service: 'decoder',
        worker: 'the decoder engine thread',
        setting: 'LOUPE_DECODER_STEP_TIMEOUT_MS',
      },
    });
  });
});
