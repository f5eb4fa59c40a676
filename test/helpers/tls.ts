// Throwaway certificates for TLS tests, made with the openssl CLI: a CA, and certificates it
// signs for a server (names to check) or a client. EC P-256 keys, so making them is quick.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A certificate and its key, as PEM files. */
export interface CertFiles {
  certFile: string;
  keyFile: string;
}

/** A CA: its certificate (what peers trust, ca.crt) and the key that signs. */
export interface Ca extends CertFiles {
  name: string;
  dir: string;
}

const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

/** Whether the openssl CLI is installed (the TLS tests need it). */
export function hasOpenssl(): boolean {
  try {
    openssl(['version']);
    return true;
  } catch {
    return false;
  }
}

/** A self-signed CA in `dir`, files named after `name`. */
export function makeCa(dir: string, name: string): Ca {
  const ca = { name, dir, certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`) };
  openssl([
    'req',
    '-x509',
    ...EC_KEY,
    '-keyout',
    ca.keyFile,
    '-out',
    ca.certFile,
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return ca;
}

/**
 * A certificate signed by `ca`, for a server (`names`: DNS names and IP addresses it answers
 * to) or a client.
 */
export function issue(
  ca: Ca,
  name: string,
  { names = [], usage }: { names?: string[]; usage: 'server' | 'client' },
): CertFiles {
  const base = join(ca.dir, `${ca.name}-${name}`);
  const files = { certFile: `${base}.crt`, keyFile: `${base}.key` };
  openssl([
    'req',
    '-new',
    ...EC_KEY,
    '-keyout',
    files.keyFile,
    '-out',
    `${base}.csr`,
    '-subj',
    `/CN=${name}`,
  ]);
  const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
  writeFileSync(
    `${base}.ext`,
    [
      'basicConstraints=CA:FALSE',
      `extendedKeyUsage=${usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(san ? [`subjectAltName=${san}`] : []),
      '',
    ].join('\n'),
  );
  openssl([
    'x509',
    '-req',
    '-in',
    `${base}.csr`,
    '-CA',
    ca.certFile,
    '-CAkey',
    ca.keyFile,
    '-set_serial',
    `0x${Date.now().toString(16)}${Math.floor(Math.random() * 0xffff).toString(16)}`,
    '-days',
    '2',
    '-extfile',
    `${base}.ext`,
    '-out',
    files.certFile,
  ]);
  return files;
}

/** The three files a Loupe process takes (LOUPE_GRPC_TLS_CERT_FILE, _KEY_FILE, _CA_FILE). */
export interface TlsFiles extends CertFiles {
  caFile: string;
}

export const tlsFiles = (ca: Ca, cert: CertFiles): TlsFiles => ({ ...cert, caFile: ca.certFile });

/** The environment that gives a process these files. */
export const tlsEnv = (files: TlsFiles): Record<string, string> => ({
  LOUPE_GRPC_TLS_CERT_FILE: files.certFile,
  LOUPE_GRPC_TLS_KEY_FILE: files.keyFile,
  LOUPE_GRPC_TLS_CA_FILE: files.caFile,
});

/** A file's bytes, for credentials.createSsl. */
export const pem = (file: string): Buffer => readFileSync(file);
