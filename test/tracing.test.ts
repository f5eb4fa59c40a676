// One chat request makes one trace across the gateway and all three stages: every process
// exports its spans over OTLP/HTTP to a collector stand-in on loopback (a test double of an
// OpenTelemetry collector, which cannot run here), and the spans share one trace id.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTinyModel } from '../services/model/index.js';
import { fixturesDir } from './helpers/fixtures.js';
import {
  builtService,
  ephemeralPorts,
  startGateway,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from './helpers/service-process.js';

interface ExportedSpan {
  traceId: string;
  name: string;
}
interface ExportRequest {
  resourceSpans: Array<{
    resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> };
    scopeSpans: Array<{ spans: ExportedSpan[] }>;
  }>;
}

const work = mkdtempSync(join(tmpdir(), 'loupe-tracing-'));
const modelDir = join(work, 'tiny-seed0');
const received: Array<{ service: string; traceId: string; name: string }> = [];
let collector: Server;
let endpoint = '';

beforeAll(async () => {
  writeTinyModel({ out: modelDir, seed: 0 });
  collector = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as ExportRequest;
      for (const rs of body.resourceSpans) {
        const service =
          rs.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
        for (const ss of rs.scopeSpans) {
          for (const span of ss.spans)
            received.push({ service, traceId: span.traceId, name: span.name });
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await stopServiceProcesses();
  collector?.close();
  rmSync(work, { recursive: true, force: true });
});

const CALLER_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';

describe('tracing', () => {
  it("puts the gateway and the three stages of one request in the caller's trace", async () => {
    const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, LOUPE_MODEL_DIR: modelDir };
    const stages: ServiceProcess[] = await Promise.all(
      ['preprocessor', 'encoder', 'decoder'].map((name) =>
        startServiceProcess(builtService(name), { ...ephemeralPorts(name.toUpperCase()), ...otel }),
      ),
    );
    const gateway = await startGateway(
      modelDir,
      {
        preprocessor: stages[0]!.grpcAddress,
        encoder: stages[1]!.grpcAddress,
        decoder: stages[2]!.grpcAddress,
      },
      otel,
    );
    const image = readFileSync(join(fixturesDir, 'images', 'png-200x377.png')).toString('base64');
    const r = await fetch(`${gateway.httpBase}/v1/chat/completions`, {
      method: 'POST',
      // The caller's trace: the gateway's span must continue it.
      headers: {
        'content-type': 'application/json',
        traceparent: `00-${CALLER_TRACE}-00f067aa0ba902b7-01`,
      },
      body: JSON.stringify({
        model: 'tiny-seed0',
        max_tokens: 3,
        messages: [
          {
            role: 'user',
            content: [
              { type: 'image_url', image_url: { url: `data:image/png;base64,${image}` } },
              { type: 'text', text: 'Hi' },
            ],
          },
        ],
      }),
    });
    expect(r.status).toBe(200);
    // Stopping flushes each process's spans to the collector.
    for (const p of [gateway, ...stages]) expect(await p.stop()).toBe(0);

    const root = received.find(
      (s) => s.service === 'loupe-gateway' && s.name === 'POST /v1/chat/completions',
    );
    expect(root).toBeDefined();
    expect(root!.traceId).toBe(CALLER_TRACE);
    const trace = received.filter((s) => s.traceId === root!.traceId);
    expect(new Set(trace.map((s) => s.service))).toEqual(
      new Set(['loupe-gateway', 'loupe-preprocessor', 'loupe-encoder', 'loupe-decoder']),
    );
    expect(trace.map((s) => s.name)).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/Preprocess/),
        expect.stringMatching(/Encode/),
        expect.stringMatching(/Generate/),
      ]),
    );
  });
});
