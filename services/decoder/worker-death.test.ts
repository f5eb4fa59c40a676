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
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from '../../proto/gen/grpc/health/v1/health.js';
import {
  DecoderClient,
  type GenerateFinished,
  type GenerateRequest,
  type GenerateResponse,
  type GeneratedToken,
} from '../../proto/gen/loupe/v1/decoder.js';
import { checkHealth, clientOptions, healthClient } from '../../test/helpers/grpc.js';
import {
  builtService,
  ephemeralPorts,
  startServiceProcess,
  stopServiceProcesses,
} from '../../test/helpers/service-process.js';
import { writeTinyModel } from '../model/index.js';
import { loadGoldenCase } from '../model/language-model/goldens.test-helper.js';

const script = builtService('decoder');
const work = mkdtempSync(join(tmpdir(), 'loupe-decoder-death-'));
const modelDir = join(work, 'tiny-seed0');

const reason = (error: ServiceError) => String(error.metadata.get('loupe-reason')[0] ?? '');

function request(promptTokenIds: number[], maxNewTokens: number): GenerateRequest {
  return {
    promptTokenIds,
    images: [],
    sampling: { temperature: 0 },
    stopTokenIds: [],
    logitBias: {},
    responseFormat: undefined,
    maxNewTokens,
    logprobs: false,
    topLogprobs: 0,
  };
}

/** A text prompt of `n` ordinary tokens (no <image>, no end of sequence). */
const prompt = (n: number) => Array.from({ length: n }, (_, i) => 3 + (i % 400));

interface Streamed {
  tokens: GeneratedToken[];
  finished: GenerateFinished | undefined;
  error?: ServiceError;
}

/** Runs Generate to its end: the tokens, and how it ended. */
function generate(client: DecoderClient, req: GenerateRequest): Promise<Streamed> {
  return new Promise((resolve) => {
    const stream = client.generate(req, new Metadata(), {
      deadline: new Date(Date.now() + 60_000),
    });
    const result: Streamed = { tokens: [], finished: undefined };
    stream.on('data', (m: GenerateResponse) => {
      if (m.event?.$case === 'token') result.tokens.push(m.event.value);
      else if (m.event?.$case === 'finished') result.finished = m.event.value;
    });
    stream.on('error', (error: ServiceError) => resolve({ ...result, error }));
    stream.on('end', () => resolve(result));
  });
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
    const decoder = new DecoderClient(
      service.grpcAddress,
      credentials.createInsecure(),
      clientOptions,
    );
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
    const service = await startServiceProcess(script, {
      ...ephemeralPorts('DECODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_DECODER_THREADS: '1',
      LOUPE_DECODER_MAX_CONTEXT: '4096',
      LOUPE_DECODER_MAX_PREFILL_TOKENS: '2048',
      LOUPE_DECODER_STEP_TIMEOUT_MS: '1',
      // The step budget must stay below the watchdog's limit (config.ts): none here.
      LOUPE_DECODER_MAX_STEP_MS: '0',
    });
    const decoder = new DecoderClient(
      service.grpcAddress,
      credentials.createInsecure(),
      clientOptions,
    );
    const health = watchHealth(service.grpcAddress, 'loupe.v1.Decoder');
    try {
      await health.until(ServingStatus.SERVING);
      const [first, second] = await Promise.all([
        generate(decoder, request(prompt(2000), 8)),
        generate(decoder, request(prompt(2000), 8)),
      ]);
      expect(first.error?.code).toBe(status.UNAVAILABLE);
      expect(reason(first.error!)).toBe('worker_died');
      expect(first.error?.details).toMatch(
        /^the text model cannot run: the decoder engine thread stalled: no answer for \d+ ms; the decoder is exiting to be restarted$/,
      );
      expect(first.tokens).toEqual([]);
      // The other request failed with it, or found the server already going away.
      expect(second.error?.code).toBe(status.UNAVAILABLE);

      await health.until(ServingStatus.NOT_SERVING);
      expect(health.seen).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
      const died = await service.waitForLog((e) => e.event === 'worker_died');
      expect(died).toMatchObject({
        level: 'error',
        service: 'decoder',
        worker: 'the decoder engine thread',
        setting: 'LOUPE_DECODER_STEP_TIMEOUT_MS',
        exitingWith: 70,
      });
      expect(died.stalledMs).toEqual(expect.any(Number));
      expect(await service.exited).toBe(70);
    } finally {
      health.close();
      decoder.close();
    }
  });
});
