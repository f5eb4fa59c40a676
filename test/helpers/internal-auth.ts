// What the two protections of internal gRPC (a shared token, and TLS with client
// certificates: docs/configuration.md, "Every service") are tested with alike: a tiny-model
// decoder behind one, and gateways in front of it with and without what it asks for.
import { expect } from 'vitest';
import {
  builtService,
  ephemeralPorts,
  startGateway,
  startServiceProcess,
  type ServiceProcess,
} from './service-process.js';

/** Starts the decoder on the tiny checkpoint in `modelDir`, protected by `protection` (env). */
export function startProtectedDecoder(
  modelDir: string,
  protection: Record<string, string>,
): Promise<ServiceProcess> {
  return startServiceProcess(builtService('decoder'), {
    ...ephemeralPorts('DECODER'),
    LOUPE_MODEL_DIR: modelDir,
    LOUPE_DECODER_THREADS: '1',
    ...protection,
  });
}

export interface GatewayAnswer {
  status: number;
  ok: boolean;
  body: { error?: { message: string } } & Record<string, unknown>;
}

/** A two-token text chat through gateway `g` (the model is the checkpoint's directory, tiny). */
export async function askGateway(g: ServiceProcess): Promise<GatewayAnswer> {
  const r = await fetch(`${g.httpBase}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'tiny',
      max_tokens: 2,
      messages: [{ role: 'user', content: 'hi' }],
    }),
  });
  return { status: r.status, ok: r.ok, body: (await r.json()) as GatewayAnswer['body'] };
}

/**
 * Starts a gateway in front of `decoder` with `withEnv` (what the protection asks for) and
 * asks it; then one without, and asks it; stops both (each must exit 0). Returns the answers.
 */
export async function gatewaysWithAndWithout(
  modelDir: string,
  decoder: ServiceProcess,
  withEnv: Record<string, string>,
): Promise<{ with: GatewayAnswer; without: GatewayAnswer }> {
  const gateway = (env: Record<string, string>) =>
    startGateway(modelDir, { decoder: decoder.grpcAddress }, env);
  const withIt = await gateway(withEnv);
  const answered = await askGateway(withIt);
  const withoutIt = await gateway({});
  const refused = await askGateway(withoutIt);
  for (const g of [withIt, withoutIt]) expect(await g.stop()).toBe(0);
  return { with: answered, without: refused };
}
