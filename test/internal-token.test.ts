// Internal gRPC with a shared token (LOUPE_GRPC_TOKEN / LOUPE_GRPC_TOKEN_FILE): a stage refuses
// calls without it (health stays open for probes), and a gateway that has it gets answers.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthCheckResponse_ServingStatus } from '../proto/gen/grpc/health/v1/health.js';
import { DecoderClient } from '../proto/gen/loupe/v1/decoder.js';
import { writeTinyModel } from '../services/model/index.js';
import { call, checkHealth, clientOptions, healthClient, loupeReason } from './helpers/grpc.js';
import { gatewaysWithAndWithout, startProtectedDecoder } from './helpers/internal-auth.js';
import { stopServiceProcesses, type ServiceProcess } from './helpers/service-process.js';

const TOKEN = 'internal-s3cret';
const work = mkdtempSync(join(tmpdir(), 'loupe-token-'));
const modelDir = join(work, 'tiny');
let decoder: ServiceProcess;

beforeAll(async () => {
  writeTinyModel({ out: modelDir, seed: 0 });
  decoder = await startProtectedDecoder(modelDir, { LOUPE_GRPC_TOKEN: TOKEN });
});
afterAll(async () => {
  await stopServiceProcesses();
  rmSync(work, { recursive: true, force: true });
});

describe('the internal token', () => {
  it('a stage refuses calls without it, answers with it, and keeps health open', async () => {
    const client = new DecoderClient(
      decoder.grpcAddress,
      credentials.createInsecure(),
      clientOptions,
    );
    const refused = await call(client, client.info, {}).catch((e: ServiceError) => e);
    expect((refused as ServiceError).code).toBe(status.UNAUTHENTICATED);
    expect(loupeReason(refused as ServiceError)).toBe('unauthenticated');
    const wrong = new Metadata();
    wrong.set('authorization', 'Bearer nope');
    expect(
      ((await call(client, client.info, {}, { metadata: wrong }).catch((e) => e)) as ServiceError)
        .code,
    ).toBe(status.UNAUTHENTICATED);
    const right = new Metadata();
    right.set('authorization', `Bearer ${TOKEN}`);
    expect((await call(client, client.info, {}, { metadata: right })).vocabSize).toBe(461);
    const health = healthClient(decoder.grpcAddress);
    expect((await checkHealth(health, 'loupe.v1.Decoder')).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    health.close();
    client.close();
  });

  it('a gateway with the token (from a file) gets answers; one without does not', async () => {
    const tokenFile = join(work, 'token');
    writeFileSync(tokenFile, `${TOKEN}\n`);
    const answers = await gatewaysWithAndWithout(modelDir, decoder, {
      LOUPE_GRPC_TOKEN_FILE: tokenFile,
    });
    expect(answers.with.status).toBe(200);
    expect(answers.without.status).toBe(500);
    expect(answers.without.body.error?.message).toMatch(/unauthenticated/);
  });
});
