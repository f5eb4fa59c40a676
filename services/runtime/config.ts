// Configuration from environment variables: parsed once, at start, with a zod schema keyed by
// the variables' names, then arranged by a layout into a frozen typed object with camelCase
// settings (`config.maxContext`, `config.grpc.reflection`). An invalid value stops the process
// with a message naming the variable. docs/configuration.md lists every variable.
import { z } from 'zod';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export type Env = Record<string, string | undefined>;

/**
 * A configuration object's layout: each setting's name, and the environment variable it is
 * read from; a nested layout groups settings (`grpc: { reflection: 'LOUPE_GRPC_REFLECTION' }`).
 */
export interface Layout {
  readonly [setting: string]: string | Layout;
}

/** The configuration object `L` makes of `E`, the values of the variables a schema parsed. */
export type ConfigOf<E, L> = {
  readonly [K in keyof L]: L[K] extends keyof E ? E[L[K]] : ConfigOf<E, L[K]>;
};

/** The variables a layout reads. */
type LayoutVariables<L> = L extends string ? L : { [K in keyof L]: LayoutVariables<L[K]> }[keyof L];

/**
 * Checks that a layout reads every variable of its schema, and only those: a variable without
 * a setting, or a setting without a variable, is a type error naming them.
 */
type EveryVariable<E, L> = [Exclude<keyof E, LayoutVariables<L>>] extends [never]
  ? [Exclude<LayoutVariables<L>, keyof E>] extends [never]
    ? unknown
    : { settingsWithoutAVariable: Exclude<LayoutVariables<L>, keyof E> }
  : { variablesWithoutASetting: Exclude<keyof E, LayoutVariables<L>> };

/**
 * Parses `env` with `schema` (whose keys are variable names) and arranges the values as
 * `layout` says, into a deeply frozen object.
 */
export function loadConfig<S extends z.ZodObject, L extends Layout>(
  schema: S,
  layout: L & EveryVariable<z.infer<S>, L>,
  env: Env = process.env,
): ConfigOf<z.infer<S>, L> {
  const result = schema.safeParse(env);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const variable = issue.path.join('.') || '(environment)';
      const raw = env[String(issue.path[0])];
      const shown = raw === undefined ? 'unset' : JSON.stringify(raw);
      return `  ${variable}: ${issue.message} (got ${shown})`;
    });
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  return deepFreeze(arrange(result.data as Record<string, unknown>, layout)) as ConfigOf<
    z.infer<S>,
    L
  >;
}

function arrange(values: Record<string, unknown>, layout: Layout): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(layout).map(([setting, from]) => [
      setting,
      typeof from === 'string' ? values[from] : arrange(values, from),
    ]),
  );
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

// Field builders: every variable arrives as a string (or undefined); these coerce and bound it.

/** An integer in [min, max], with a default. */
export function intVar(defaultValue: number, { min = 0, max = Number.MAX_SAFE_INTEGER } = {}) {
  return z
    .string()
    .trim()
    .regex(/^-?\d+$/, 'must be an integer')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max))
    .optional()
    .transform((v) => v ?? defaultValue);
}

/** A TCP port; 0 asks the OS for a free one. */
export function portVar(defaultValue: number) {
  return intVar(defaultValue, { min: 0, max: 65535 });
}

/** An optional TCP port: undefined when unset or empty; 0 asks the OS for a free one. */
export function optionalPortVar() {
  return z
    .string()
    .trim()
    .optional()
    .transform((v) => (v === undefined || v === '' ? undefined : v))
    .pipe(
      z
        .string()
        .regex(/^\d+$/, 'must be an integer')
        .transform(Number)
        .pipe(z.number().int().min(0).max(65535))
        .optional(),
    );
}

/** A boolean: true/false/1/0/yes/no/on/off. */
export function boolVar(defaultValue: boolean) {
  return z
    .string()
    .trim()
    .toLowerCase()
    .refine((v) => TRUE.has(v) || FALSE.has(v), 'must be true or false')
    .transform((v) => TRUE.has(v))
    .optional()
    .transform((v) => v ?? defaultValue);
}
const TRUE = new Set(['1', 'true', 'yes', 'on']);
const FALSE = new Set(['0', 'false', 'no', 'off']);

/** A string, with a default. */
export function stringVar(defaultValue: string) {
  return z
    .string()
    .optional()
    .transform((v) => (v === undefined || v === '' ? defaultValue : v));
}

/** One of a fixed set of strings. */
export function enumVar<const T extends readonly [string, ...string[]]>(
  values: T,
  defaultValue: T[number],
) {
  return z
    .enum(values)
    .optional()
    .transform((v) => v ?? defaultValue);
}

/** An optional string: undefined when unset or empty. */
export function optionalStringVar() {
  return z
    .string()
    .optional()
    .transform((v) => (v === undefined || v === '' ? undefined : v));
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/** Variables every service shares. Spread into a service's own schema. */
export const commonEnvSchema = {
  /** pino level. */
  LOUPE_LOG_LEVEL: enumVar(LOG_LEVELS, 'info'),
  /** Largest gRPC message sent or received, bytes (the 4 MiB default is too small for images). */
  LOUPE_GRPC_MAX_MESSAGE_BYTES: intVar(64 * 1024 * 1024, { min: 1024 * 1024, max: 2 ** 31 - 1 }),
  /** Serve gRPC server reflection (grpcurl list/describe); off by default: it describes every method. */
  LOUPE_GRPC_REFLECTION: boolVar(false),
  /** Calls one gRPC connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  LOUPE_GRPC_MAX_CONCURRENT_STREAMS: intVar(100, { min: 1, max: 2 ** 31 - 1 }),
  /**
   * A shared token for internal gRPC: the stages refuse calls without it (health stays open
   * for probes) and the gateway sends it. A file path (a mounted Secret) in
   * LOUPE_GRPC_TOKEN_FILE is read instead when set. Unset: no check.
   */
  LOUPE_GRPC_TOKEN: optionalStringVar(),
  LOUPE_GRPC_TOKEN_FILE: optionalStringVar(),
  /**
   * TLS with client certificates (mTLS) for internal gRPC, beside or instead of the token: this
   * process's certificate chain and key, and the CA bundle peers' certificates must chain to
   * (PEM files: tls.crt, tls.key and ca.crt of a cert-manager Secret). All three or none
   * (grpcTlsConfig in grpc-tls.ts checks); re-read when they change. Unset: plaintext.
   */
  LOUPE_GRPC_TLS_CERT_FILE: optionalStringVar(),
  LOUPE_GRPC_TLS_KEY_FILE: optionalStringVar(),
  LOUPE_GRPC_TLS_CA_FILE: optionalStringVar(),
  /**
   * Clients (the gateway): the name checked against the stages' certificates instead of the
   * dialled host (grpc.ssl_target_name_override), for endpoints that are pod IPs.
   */
  LOUPE_GRPC_TLS_SERVER_NAME: optionalStringVar(),
  /**
   * Stages: also serve grpc.health.v1 alone, in plaintext, on this port (Kubernetes' gRPC
   * probes cannot speak TLS). Required when TLS is on; 0 picks a free port.
   */
  LOUPE_GRPC_HEALTH_PORT: optionalPortVar(),
  /** Time allowed to drain in-flight calls after SIGTERM before they are cancelled, ms. */
  LOUPE_SHUTDOWN_GRACE_MS: intVar(25_000, { min: 0, max: 600_000 }),
  /** OTLP/HTTP traces endpoint base (e.g. http://otel-collector:4318); unset: spans are not exported. */
  OTEL_EXPORTER_OTLP_ENDPOINT: optionalStringVar(),
  /** Overrides the service name on spans. */
  OTEL_SERVICE_NAME: optionalStringVar(),
};

/** Where each common variable goes in a service's configuration object. */
export const commonLayout = {
  logLevel: 'LOUPE_LOG_LEVEL',
  grpc: {
    maxMessageBytes: 'LOUPE_GRPC_MAX_MESSAGE_BYTES',
    reflection: 'LOUPE_GRPC_REFLECTION',
    maxConcurrentStreams: 'LOUPE_GRPC_MAX_CONCURRENT_STREAMS',
    token: 'LOUPE_GRPC_TOKEN',
    tokenFile: 'LOUPE_GRPC_TOKEN_FILE',
    tls: {
      certFile: 'LOUPE_GRPC_TLS_CERT_FILE',
      keyFile: 'LOUPE_GRPC_TLS_KEY_FILE',
      caFile: 'LOUPE_GRPC_TLS_CA_FILE',
      serverName: 'LOUPE_GRPC_TLS_SERVER_NAME',
    },
    healthPort: 'LOUPE_GRPC_HEALTH_PORT',
  },
  shutdownGraceMs: 'LOUPE_SHUTDOWN_GRACE_MS',
  tracing: {
    otlpEndpoint: 'OTEL_EXPORTER_OTLP_ENDPOINT',
    serviceName: 'OTEL_SERVICE_NAME',
  },
} as const;

const commonSchema = z.object(commonEnvSchema);

/** The settings every service's configuration holds. */
export type CommonConfig = ConfigOf<z.infer<typeof commonSchema>, typeof commonLayout>;

/** The common settings alone (tests; a service loads them with its own). */
export const loadCommonConfig = (env: Env = process.env): CommonConfig =>
  loadConfig(commonSchema, commonLayout, env);
