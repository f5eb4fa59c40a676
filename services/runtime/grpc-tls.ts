// TLS with client certificates (mTLS) for internal gRPC: the stages present a certificate and
// refuse, at the handshake, clients whose certificate does not chain to the CA bundle; the
// gateway presents its own and checks the stages'. Certificates come from files (a mounted
// cert-manager Secret: tls.crt, tls.key, ca.crt) and are re-read while the process runs, so a
// rotated certificate is taken without a restart (docs/operations.md, "Internal gRPC TLS").
//
// Rotation rests on grpc-js's certificate-provider credentials (`experimental` in the pinned
// 1.14.7): a server built with them calls setSecureContext on its TLS server for each update,
// and a channel builds each new connection's context from the latest update. The static
// ServerCredentials.createSsl / credentials.createSsl would keep the start-up certificate
// until a restart. Connections already open keep the certificate they were made with.
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import {
  credentials,
  experimental,
  type ChannelCredentials,
  type ChannelOptions,
  type ServerCredentials,
} from '@grpc/grpc-js';
import { ConfigError } from './config.js';
import type { Logger } from './logger.js';

/** PEM files: this process's certificate chain and key, and the CA bundle peers chain to. */
export interface TlsFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
}

/** A client's TLS: the files, and the name to check the server's certificate against. */
export interface ClientTls extends TlsFiles {
  /** Checked instead of the dialled host (grpc.ssl_target_name_override), e.g. for pod IPs. */
  serverName?: string;
}

const FILE_VARIABLES = {
  certFile: 'LOUPE_GRPC_TLS_CERT_FILE',
  keyFile: 'LOUPE_GRPC_TLS_KEY_FILE',
  caFile: 'LOUPE_GRPC_TLS_CA_FILE',
} as const;

/** The TLS settings of a configuration (`config.grpc.tls`: LOUPE_GRPC_TLS_*). */
export interface TlsSettings {
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  readonly caFile?: string | undefined;
  readonly serverName?: string | undefined;
}

/**
 * The internal gRPC TLS of a configuration, or undefined when it is off. The three files go
 * together: a partial set is a ConfigError naming what is missing (a half-configured TLS
 * silently falling back to plaintext is the failure this prevents).
 */
export function grpcTlsConfig(settings: TlsSettings): ClientTls | undefined {
  const files = {
    certFile: settings.certFile,
    keyFile: settings.keyFile,
    caFile: settings.caFile,
  };
  const missing = (Object.keys(FILE_VARIABLES) as Array<keyof TlsFiles>)
    .filter((key) => !files[key])
    .map((key) => FILE_VARIABLES[key]);
  if (missing.length === 3) {
    if (settings.serverName)
      throw new ConfigError(
        'LOUPE_GRPC_TLS_SERVER_NAME is set but internal gRPC TLS is off: set LOUPE_GRPC_TLS_CERT_FILE, LOUPE_GRPC_TLS_KEY_FILE and LOUPE_GRPC_TLS_CA_FILE too, or unset it',
      );
    return undefined;
  }
  if (missing.length > 0)
    throw new ConfigError(
      `internal gRPC TLS needs LOUPE_GRPC_TLS_CERT_FILE, LOUPE_GRPC_TLS_KEY_FILE and LOUPE_GRPC_TLS_CA_FILE together: ${missing.join(' and ')} ${missing.length === 1 ? 'is' : 'are'} unset`,
    );
  const serverName = settings.serverName;
  return {
    certFile: files.certFile!,
    keyFile: files.keyFile!,
    caFile: files.caFile!,
    ...(serverName ? { serverName } : {}),
  };
}

/** How a stage serves gRPC: its certificates (TLS on) and the plaintext health port (when set). */
export interface StageTransport {
  tls?: CertificateFiles;
  healthPort?: number;
}

/**
 * A stage's transport, checked at start: the files are read now, before a model load that may
 * take minutes. With TLS on, the health port is required: Kubernetes' gRPC probes cannot speak
 * TLS, so they need health in plaintext on a port of its own, and no default suits every stage
 * at once (three stages on one host would collide), so it is asked for.
 */
export function stageTransport(
  grpc: { readonly tls: TlsSettings; readonly healthPort?: number | undefined },
  logger?: Logger,
): StageTransport {
  const tls = grpcTlsConfig(grpc.tls);
  const healthPort = grpc.healthPort;
  if (tls && healthPort === undefined)
    throw new ConfigError(
      'internal gRPC TLS is on (LOUPE_GRPC_TLS_*) but LOUPE_GRPC_HEALTH_PORT is unset: Kubernetes gRPC probes cannot speak TLS, so a stage with TLS serves health in plaintext on that port (0 picks a free one)',
    );
  return {
    ...(tls ? { tls: new CertificateFiles(tls, logger ? { logger } : {}) } : {}),
    ...(healthPort === undefined ? {} : { healthPort }),
  };
}

interface Pem {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
}

/** Reads the three files, naming the variable of one that cannot be read. */
function readPemSync(files: TlsFiles): Pem {
  const read = (key: keyof TlsFiles) => {
    try {
      return readFileSync(files[key]);
    } catch (error) {
      throw new Error(`${FILE_VARIABLES[key]}: ${(error as Error).message}`, { cause: error });
    }
  };
  return { cert: read('certFile'), key: read('keyFile'), ca: read('caFile') };
}

async function readPem(files: TlsFiles): Promise<Pem> {
  const read = (key: keyof TlsFiles) =>
    readFile(files[key]).catch((error: Error) => {
      throw new Error(`${FILE_VARIABLES[key]}: ${error.message}`, { cause: error });
    });
  const [cert, key, ca] = await Promise.all([read('certFile'), read('keyFile'), read('caFile')]);
  return { cert, key, ca };
}

/**
 * Checks that the files make a usable identity: parseable certificates, a key that is the
 * certificate's. Returns the leaf certificate, for the log.
 */
function validate(files: TlsFiles, pem: Pem): X509Certificate {
  const named = (key: keyof TlsFiles) => `${FILE_VARIABLES[key]} ${files[key]}`;
  const check = <T>(make: () => T, what: string): T => {
    try {
      return make();
    } catch (error) {
      throw new Error(`${what} (${(error as Error).message})`, { cause: error });
    }
  };
  const leaf = check(
    () => new X509Certificate(pem.cert),
    `${named('certFile')} holds no PEM certificate`,
  );
  check(() => new X509Certificate(pem.ca), `${named('caFile')} holds no PEM certificate`);
  const key = check(
    () => createPrivateKey(pem.key),
    `${named('keyFile')} holds no PEM private key`,
  );
  if (!leaf.checkPrivateKey(key))
    throw new Error(`${named('keyFile')} is not the key of ${named('certFile')}`);
  check(
    () => createSecureContext({ cert: pem.cert, key: pem.key, ca: pem.ca }),
    'the files do not make a TLS context',
  );
  return leaf;
}

/** Kubelet refreshes a mounted Secret within about a minute of a change; polling as often is enough. */
const DEFAULT_REFRESH_MS = 60_000;

/**
 * The TLS files as a grpc-js certificate provider: read and checked at construction (a bad
 * set is a ConfigError, at start), then re-read every `refreshMs` while some credentials use
 * them. A changed set is passed on only when it checks out: a Secret's files are swapped
 * together, but a read may straddle the swap and see a new certificate with the old key, and
 * a failed read must not take the listener down, so the last good set stays until the next
 * read. Polling rather than fs.watch: a Secret volume swaps a symlink (..data), which watches
 * on the files themselves miss.
 */
export class CertificateFiles implements experimental.CertificateProvider {
  #pem: Pem;
  readonly #identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();
  readonly #caListeners = new Set<experimental.CaCertificateUpdateListener>();
  #timer: NodeJS.Timeout | undefined;
  #reading: Promise<boolean> | undefined;

  constructor(
    readonly files: TlsFiles,
    private readonly options: { logger?: Logger; refreshMs?: number } = {},
  ) {
    let leaf: X509Certificate;
    try {
      this.#pem = readPemSync(files);
      leaf = validate(files, this.#pem);
    } catch (error) {
      throw new ConfigError(`internal gRPC TLS: ${(error as Error).message}`, { cause: error });
    }
    this.#logLoaded('gRPC TLS certificate loaded', leaf);
  }

  /**
   * Re-reads the files now; resolves true when they changed and the new set was taken, false
   * when unchanged or unusable (logged; the previous set stays).
   */
  reload(): Promise<boolean> {
    this.#reading ??= this.#reload().finally(() => (this.#reading = undefined));
    return this.#reading;
  }

  async #reload(): Promise<boolean> {
    let pem: Pem;
    let leaf: X509Certificate;
    try {
      pem = await readPem(this.files);
      if (sameFiles(pem, this.#pem)) return false;
      leaf = validate(this.files, pem);
    } catch (error) {
      this.options.logger?.warn(
        { err: (error as Error).message },
        'gRPC TLS files changed but cannot be used; keeping the previous certificate',
      );
      return false;
    }
    this.#pem = pem;
    this.#logLoaded('gRPC TLS certificate reloaded', leaf);
    for (const listener of this.#identityListeners) listener(this.#identity());
    for (const listener of this.#caListeners) listener(this.#ca());
    return true;
  }

  #logLoaded(message: string, leaf: X509Certificate): void {
    this.options.logger?.info(
      { subject: leaf.subject, subjectAltName: leaf.subjectAltName, validTo: leaf.validTo },
      message,
    );
  }

  #identity(): experimental.IdentityCertificateUpdate {
    return { certificate: this.#pem.cert, privateKey: this.#pem.key };
  }

  #ca(): experimental.CaCertificateUpdate {
    return { caCertificate: this.#pem.ca };
  }

  addIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.#identityListeners.add(listener);
    this.#watch();
    // Given asynchronously, as grpc-js's own file watcher does. A server drops connections
    // until its first update; this one lands on the next tick, before its bind completes.
    process.nextTick(listener, this.#identity());
  }

  removeIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener) {
    this.#identityListeners.delete(listener);
    this.#unwatchWhenUnused();
  }

  addCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.#caListeners.add(listener);
    this.#watch();
    process.nextTick(listener, this.#ca());
  }

  removeCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.#caListeners.delete(listener);
    this.#unwatchWhenUnused();
  }

  #watch(): void {
    if (this.#timer) return;
    this.#timer = setInterval(
      () => void this.reload(),
      this.options.refreshMs ?? DEFAULT_REFRESH_MS,
    );
    // Certificates alone never keep a process alive.
    this.#timer.unref();
  }

  #unwatchWhenUnused(): void {
    if (this.#identityListeners.size > 0 || this.#caListeners.size > 0) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

const sameFiles = (a: Pem, b: Pem) =>
  a.cert.equals(b.cert) && a.key.equals(b.key) && a.ca.equals(b.ca);

/**
 * Server credentials that present the files' certificate and require a client certificate
 * chaining to the CA (checkClientCertificate = true of ServerCredentials.createSsl), following
 * the files as they change.
 */
export function serverTlsCredentials(certificates: CertificateFiles): ServerCredentials {
  // One provider gives both the identity and the CA; grpc-js's own names for the first two
  // arguments are swapped relative to its constructor, which one provider makes moot.
  return experimental.createCertificateProviderServerCredentials(certificates, certificates, true);
}

/** What a client dials with: credentials, and channel options they need. */
export interface ClientTransport {
  credentials: ChannelCredentials;
  options: ChannelOptions;
  /** The files behind TLS credentials (reload() re-reads them now). */
  certificates?: CertificateFiles;
}

/**
 * A client's transport: plaintext without `tls`; with it, TLS presenting the files'
 * certificate and checking the server's against the CA bundle (and `serverName`, when given,
 * instead of the dialled host), following the files as they change.
 */
export function clientTransport(tls?: ClientTls, logger?: Logger): ClientTransport {
  if (!tls) return { credentials: credentials.createInsecure(), options: {} };
  const certificates = new CertificateFiles(tls, logger ? { logger } : {});
  return {
    credentials: experimental.createCertificateProviderChannelCredentials(
      certificates,
      certificates,
    ),
    options: tls.serverName ? { 'grpc.ssl_target_name_override': tls.serverName } : {},
    certificates,
  };
}
