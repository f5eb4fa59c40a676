// Internal gRPC with TLS and client certificates (LOUPE_GRPC_TLS_*): a stage answers only
// clients whose certificate its CA signed, refusing the rest at the handshake; health is also
// served alone in plaintext for probes; certificates rotate without a restart; the gateway's
// stage clients speak it; and a half-configured TLS stops the process at start.
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HealthCheckResponse_ServingStatus as Serving,
  HealthClient,
} from '../proto/gen/grpc/health/v1/health.js';
import { PreprocessorClient } from '../proto/gen/loupe/v1/preprocessor.js';
import { DecoderClient } from '../proto/gen/loupe/v1/decoder.js';
import { Stages } from '../services/gateway/stages.js';
import { writeTinyModel } from '../services/model/index.js';
import {
  CertificateFiles,
  clientTransport,
  createLogger,
  createRegistry,
  GrpcServer,
  ServingStatus,
} from '../services/runtime/index.js';
import { call, callError, checkHealth, clientOptions, healthClient } from './helpers/grpc.js';
import { gatewaysWithAndWithout, startProtectedDecoder } from './helpers/internal-auth.js';
import {
  builtService,
  ephemeralPorts,
  repoRoot,
  startGateway,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from './helpers/service-process.js';
import { issue, makeCa, pem, tlsEnv, tlsFiles, type Ca, type TlsFiles } from './helpers/tls.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-tls-'));
const modelDir = join(work, 'tiny');
const logger = createLogger({ service: 'test', level: 'silent' });
// The stages' CA, and a stranger's: a certificate it signs must not get in.
let ca: Ca;
let stranger: Ca;
/** The stage's files (certificate for 127.0.0.1 and localhost) and the gateway's. */
let stageTls: TlsFiles;
let gatewayTls: TlsFiles;
let preprocessor: ServiceProcess;

/** Channel credentials trusting `caFile`, presenting `cert` when given. */
const ssl = (caFile: string, cert?: { certFile: string; keyFile: string }): ChannelCredentials =>
  credentials.createSsl(
    pem(caFile),
    cert ? pem(cert.keyFile) : null,
    cert ? pem(cert.certFile) : null,
  );

beforeAll(async () => {
  ca = makeCa(work, 'ca');
  stranger = makeCa(work, 'stranger');
  stageTls = tlsFiles(
    ca,
    issue(ca, 'stage', { names: ['127.0.0.1', 'localhost'], usage: 'server' }),
  );
  gatewayTls = tlsFiles(ca, issue(ca, 'gateway', { usage: 'client' }));
  preprocessor = await startServiceProcess(builtService('preprocessor'), {
    ...ephemeralPorts('PREPROCESSOR'),
    LOUPE_PREPROCESSOR_WORKERS: '1',
    LOUPE_GRPC_HEALTH_PORT: '0',
    ...tlsEnv(stageTls),
  });
});
afterAll(async () => {
  await stopServiceProcesses();
  rmSync(work, { recursive: true, force: true });
});

describe('a stage with TLS', () => {
  it('answers a client whose certificate its CA signed, and says so in its ready line', async () => {
    const { ready } = preprocessor;
    expect(ready.grpcTls).toBe(true);
    expect(ready.grpcHealthPort).toBeGreaterThan(0);
    expect(ready.grpcHealthPort).not.toBe(ready.grpcPort);
    const client = new PreprocessorClient(
      preprocessor.grpcAddress,
      ssl(ca.certFile, gatewayTls),
      clientOptions,
    );
    expect((await call(client, client.info, {})).tokensPerSubImage).toBeGreaterThan(0);
    client.close();
  });

  it('refuses at the handshake a client without a certificate, with a stranger’s, or in plaintext, and stays up', async () => {
    const strangerCert = issue(stranger, 'intruder', { usage: 'client' });
    const attempts: Record<string, ChannelCredentials> = {
      'no client certificate': ssl(ca.certFile),
      'a certificate from another CA': ssl(ca.certFile, strangerCert),
      plaintext: credentials.createInsecure(),
      // And the client's side: a server certificate the client's CA did not sign.
      'a client that does not trust the server': ssl(stranger.certFile, strangerCert),
    };
    for (const [what, creds] of Object.entries(attempts)) {
      const client = new PreprocessorClient(preprocessor.grpcAddress, creds, clientOptions);
      const error = await callError(client, client.info, {}, { deadlineMs: 10_000 });
      expect([what, error.code]).toEqual([what, status.UNAVAILABLE]);
      client.close();
    }
    expect(preprocessor.child.exitCode).toBeNull();
    const good = new PreprocessorClient(
      preprocessor.grpcAddress,
      ssl(ca.certFile, gatewayTls),
      clientOptions,
    );
    expect((await call(good, good.info, {})).tokensPerSubImage).toBeGreaterThan(0);
    good.close();
  });

  it('serves health alone, in plaintext, on the health port', async () => {
    const address = `127.0.0.1:${Number(preprocessor.ready.grpcHealthPort)}`;
    const health = healthClient(address);
    for (const service of ['', 'loupe.v1.Preprocessor'])
      expect((await checkHealth(health, service)).status).toBe(Serving.SERVING);
    health.close();
    // Only health: the stage's own service is not on that port.
    const client = new PreprocessorClient(address, credentials.createInsecure(), clientOptions);
    expect((await callError(client, client.info, {})).code).toBe(status.UNIMPLEMENTED);
    client.close();
  });

  it('is reached through the gateway’s stage clients (Stages) with TLS, and not without', async () => {
    const sources = {
      preprocessor: { kind: 'static' as const, addresses: [preprocessor.grpcAddress] },
      encoder: { kind: 'static' as const, addresses: [] },
      decoder: { kind: 'static' as const, addresses: [] },
    };
    const ctx = () => ({
      signal: new AbortController().signal,
      requestId: 'tls-test',
      deadline: Date.now() + 20_000,
    });
    const image = readFileSync(join(repoRoot, 'test', 'fixtures', 'images', 'png-tiny-5x7.png'));
    const withTls = new Stages(sources, 8 * 1024 * 1024, { logger, tls: gatewayTls });
    const response = await withTls.preprocess({ image, split: false }, ctx());
    expect(response.subImagesHash).toHaveLength(32);
    expect(response.subImages.length).toBe(1);
    // The health client of each endpoint speaks TLS too (the gateway's /readyz uses it).
    expect((await withTls.ready(5_000)).preprocessor).toBe(true);
    withTls.close();

    const without = new Stages(sources, 8 * 1024 * 1024, { logger });
    await expect(without.preprocess({ image, split: false }, ctx())).rejects.toMatchObject({
      error: { code: status.UNAVAILABLE },
    });
    expect((await without.ready(5_000)).preprocessor).toBe(false);
    without.close();
  });
});

/** A GrpcServer on loopback with TLS from `certificates` and a plaintext health port. */
async function tlsServer(certificates: CertificateFiles) {
  const server = new GrpcServer({
    logger,
    tracer: trace.getTracer('test'),
    registry: createRegistry('tls-test'),
    maxMessageBytes: 1024 * 1024,
    reflectionProtos: [],
    tls: certificates,
    healthPort: 0,
  });
  const port = await server.listen('127.0.0.1', 0);
  server.setServing();
  return { server, address: `127.0.0.1:${port}`, healthAddress: `127.0.0.1:${server.healthPort}` };
}

/** The code of a health call expected to fail over `creds`. */
const refused = (address: string, creds: ChannelCredentials) =>
  healthOver(address, creds).then(
    () => 'answered',
    (error: ServiceError) => error.code,
  );

/** Health `service` over `creds`, from a client of its own (new credentials: a new handshake). */
async function healthOver(address: string, creds: ChannelCredentials, service = '') {
  const client = new HealthClient(address, creds, clientOptions);
  try {
    return await call(client, client.check, { service }, { deadlineMs: 10_000 });
  } finally {
    client.close();
  }
}

/**
 * A directory laid out as Kubernetes mounts a Secret: tls.crt, tls.key and ca.crt link into
 * ..data, a link to the current version's directory, swapped in one rename.
 */
function secretVolume(dir: string, files: TlsFiles) {
  mkdirSync(dir);
  let version = 0;
  const put = (content: { cert: Buffer; key: Buffer; ca: Buffer }) => {
    const versionDir = `..${++version}`;
    mkdirSync(join(dir, versionDir));
    writeFileSync(join(dir, versionDir, 'tls.crt'), content.cert);
    writeFileSync(join(dir, versionDir, 'tls.key'), content.key);
    writeFileSync(join(dir, versionDir, 'ca.crt'), content.ca);
    symlinkSync(versionDir, join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  };
  const read = (f: TlsFiles) => ({ cert: pem(f.certFile), key: pem(f.keyFile), ca: pem(f.caFile) });
  put(read(files));
  for (const name of ['tls.crt', 'tls.key', 'ca.crt'])
    symlinkSync(`..data/${name}`, join(dir, name));
  return {
    files: {
      certFile: join(dir, 'tls.crt'),
      keyFile: join(dir, 'tls.key'),
      caFile: join(dir, 'ca.crt'),
    },
    rotate: (next: TlsFiles) => put(read(next)),
    corrupt: () =>
      put({ cert: Buffer.from('not a certificate'), key: Buffer.alloc(0), ca: Buffer.alloc(0) }),
  };
}

describe('certificate rotation and health, in process', () => {
  it('one health registry answers on both ports: NOT_SERVING shows on each', async () => {
    const { server, address, healthAddress } = await tlsServer(new CertificateFiles(stageTls));
    const tls = ssl(ca.certFile, gatewayTls);
    expect((await healthOver(address, tls)).status).toBe(Serving.SERVING);
    expect((await healthOver(healthAddress, credentials.createInsecure())).status).toBe(
      Serving.SERVING,
    );
    server.health.setAll(ServingStatus.NOT_SERVING);
    expect((await healthOver(address, tls)).status).toBe(Serving.NOT_SERVING);
    expect((await healthOver(healthAddress, credentials.createInsecure())).status).toBe(
      Serving.NOT_SERVING,
    );
    await server.shutdown(1_000);
  });

  it('a stage takes a rotated certificate and CA without a restart, and keeps the last good one', async () => {
    const next = makeCa(work, 'next');
    const nextStage = tlsFiles(
      next,
      issue(next, 'stage', { names: ['127.0.0.1'], usage: 'server' }),
    );
    const nextGateway = tlsFiles(next, issue(next, 'gateway', { usage: 'client' }));
    const volume = secretVolume(join(work, 'stage-secret'), stageTls);
    const certificates = new CertificateFiles(volume.files, { refreshMs: 20 });
    const { server, address } = await tlsServer(certificates);
    const oldClient = () => ssl(ca.certFile, gatewayTls);
    const newClient = () => ssl(next.certFile, nextGateway);
    expect((await healthOver(address, oldClient())).status).toBe(Serving.SERVING);
    expect(await refused(address, newClient())).toBe(status.UNAVAILABLE);

    // The poll (every 20 ms here, a minute by default) finds the new files by itself.
    const taken = new Promise<void>((resolve) => {
      const nextCa = pem(next.certFile);
      const listener = (update: { caCertificate: Buffer } | null) => {
        if (!update?.caCertificate.equals(nextCa)) return;
        certificates.removeCaCertificateListener(listener);
        resolve();
      };
      certificates.addCaCertificateListener(listener);
    });
    volume.rotate(nextStage);
    await taken;
    expect((await healthOver(address, newClient())).status).toBe(Serving.SERVING);
    expect(await refused(address, oldClient())).toBe(status.UNAVAILABLE);

    // Files that do not make a certificate are not taken: the server keeps serving.
    volume.corrupt();
    expect(await certificates.reload()).toBe(false);
    expect((await healthOver(address, newClient())).status).toBe(Serving.SERVING);
    await server.shutdown(1_000);
  });

  it('a client takes rotated files for its next connection', async () => {
    const next = makeCa(work, 'client-next');
    const nextStage = tlsFiles(
      next,
      issue(next, 'stage', { names: ['127.0.0.1'], usage: 'server' }),
    );
    const nextGateway = tlsFiles(next, issue(next, 'gateway', { usage: 'client' }));
    const { server, address } = await tlsServer(new CertificateFiles(nextStage));
    const volume = secretVolume(join(work, 'gateway-secret'), gatewayTls);
    const transport = clientTransport(volume.files);
    volume.rotate(nextGateway);
    expect(await transport.certificates!.reload()).toBe(true);
    expect((await healthOver(address, transport.credentials)).status).toBe(Serving.SERVING);
    await server.shutdown(1_000);
  });

  it('LOUPE_GRPC_TLS_SERVER_NAME checks the certificate against a name, not the dialled IP', async () => {
    const serviceName = 'demo-loupe-preprocessor.loupe.svc';
    const named = tlsFiles(ca, issue(ca, 'named', { names: [serviceName], usage: 'server' }));
    const { server, address } = await tlsServer(new CertificateFiles(named));
    // Stages.ready() asks for the stage's own service.
    server.health.set('loupe.v1.Preprocessor', ServingStatus.SERVING);
    const sources = {
      preprocessor: { kind: 'static' as const, addresses: [address] },
      encoder: { kind: 'static' as const, addresses: [] },
      decoder: { kind: 'static' as const, addresses: [] },
    };
    const ready = async (tls: TlsFiles & { serverName?: string }) => {
      const stages = new Stages(sources, 1024 * 1024, { logger, tls });
      try {
        return (await stages.ready(5_000)).preprocessor;
      } finally {
        stages.close();
      }
    };
    expect(await ready(gatewayTls)).toBe(false);
    expect(await ready({ ...gatewayTls, serverName: serviceName })).toBe(true);
    await server.shutdown(1_000);
  });
});

describe('configuration checked at start', () => {
  const start = (env: Record<string, string>) =>
    startServiceProcess(
      builtService('preprocessor'),
      { ...ephemeralPorts('PREPROCESSOR'), LOUPE_PREPROCESSOR_WORKERS: '1', ...env },
      20_000,
    );

  it.each([
    [
      'a partial set of files',
      () => ({ LOUPE_GRPC_TLS_CERT_FILE: stageTls.certFile }),
      /LOUPE_GRPC_TLS_KEY_FILE and LOUPE_GRPC_TLS_CA_FILE are unset/,
    ],
    [
      'TLS without a health port',
      () => tlsEnv(stageTls),
      /LOUPE_GRPC_HEALTH_PORT is unset: Kubernetes gRPC probes cannot speak TLS/,
    ],
    [
      'a key that is not the certificate’s',
      () => ({
        ...tlsEnv({ ...stageTls, keyFile: gatewayTls.keyFile }),
        LOUPE_GRPC_HEALTH_PORT: '0',
      }),
      /LOUPE_GRPC_TLS_KEY_FILE .* is not the key of LOUPE_GRPC_TLS_CERT_FILE/,
    ],
    [
      'a file that is not there',
      () => ({
        ...tlsEnv({ ...stageTls, caFile: join(work, 'missing.crt') }),
        LOUPE_GRPC_HEALTH_PORT: '0',
      }),
      /LOUPE_GRPC_TLS_CA_FILE: ENOENT/,
    ],
  ])('%s stops the stage with exit code 2 and says why', async (_what, env, message) => {
    const error = (await start(env()).catch((e: Error) => e)) as Error;
    expect(error.message).toMatch(/process exited with code 2 first/);
    expect(error.message).toMatch(message);
  });
});

describe('the gateway with TLS', () => {
  let decoder: ServiceProcess;
  beforeAll(async () => {
    writeTinyModel({ out: modelDir, seed: 0 });
    decoder = await startProtectedDecoder(modelDir, {
      LOUPE_GRPC_HEALTH_PORT: '0',
      ...tlsEnv(stageTls),
    });
  });

  it('with certificates gets answers from a TLS decoder; without, it does not', async () => {
    const client = new DecoderClient(
      decoder.grpcAddress,
      ssl(ca.certFile, gatewayTls),
      clientOptions,
    );
    expect((await call(client, client.info, {})).vocabSize).toBe(461);
    client.close();
    const answers = await gatewaysWithAndWithout(modelDir, decoder, tlsEnv(gatewayTls));
    expect(answers.with.status).toBe(200);
    expect(answers.without.ok).toBe(false);
    // A TLS stage drains and exits cleanly too (its health port and certificate poll close).
    expect(await decoder.stop()).toBe(0);
  });

  it('refuses LOUPE_GRPC_TLS_SERVER_NAME without the files, at start', async () => {
    const error = (await startGateway(
      modelDir,
      { decoder: decoder.grpcAddress },
      { LOUPE_GRPC_TLS_SERVER_NAME: 'x' },
    ).catch((e: Error) => e)) as Error;
    expect(error.message).toMatch(/process exited with code 2 first/);
    expect(error.message).toMatch(/LOUPE_GRPC_TLS_SERVER_NAME is set but internal gRPC TLS is off/);
  });
});
