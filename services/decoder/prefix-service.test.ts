// Automatic prefix caching in the decoder process, on the tiny checkpoint and ONNX Runtime: the
// same requests, in the same order, give the same tokens with the cache on and off — greedy and
// seeded, text and images, a conversation resent turn after turn, an image resent so that the
// hit ends inside its run of tokens — and the hits show in the metrics.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DecoderClient,
  type GenerateRequest,
  type GeneratedToken,
} from '../../proto/gen/loupe/v1/decoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { clientOptions } from '../../test/helpers/grpc.js';
import { scrapeMetrics } from '../../test/helpers/metrics.js';
import {
  builtService,
  ephemeralPorts,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from '../../test/helpers/service-process.js';
import { writeTinyModel } from '../model/index.js';
import { loadGoldenCase } from '../model/language-model/goldens.test-helper.js';
import { generateRequest, generateTokens as generate } from './generate.test-helper.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-decoder-prefix-'));
const modelDir = join(work, 'tiny-seed0');
const IMAGE_TOKEN = 459;
const HIDDEN = 64;

const request = (promptTokenIds: number[], extra: Partial<GenerateRequest> = {}) =>
  generateRequest(promptTokenIds, { maxNewTokens: 24, logprobs: true, ...extra });

/** A golden case's prompt, and its image rows as one image (float32), optionally hashed. */
function imageRequest(
  name: string,
  tail: number[] = [],
  contentHash?: Buffer,
  extra: Partial<GenerateRequest> = {},
): GenerateRequest {
  const golden = loadGoldenCase(name);
  const positions = golden.inputIds.flatMap((id, i) => (id === IMAGE_TOKEN ? [i] : []));
  const rows = golden.imageRows!;
  return request([...golden.inputIds, ...tail], {
    images: [
      {
        embeddings: {
          dtype: Dtype.DTYPE_FLOAT32,
          shape: [positions.length, HIDDEN],
          data: Buffer.from(rows.buffer, rows.byteOffset, rows.byteLength),
        },
        ...(contentHash ? { contentHash } : {}),
      },
    ],
    ...extra,
  });
}

async function counter(service: ServiceProcess, name: string): Promise<number> {
  return (await scrapeMetrics(service)).value(name) ?? NaN;
}

/**
 * A session, request after request, each built from the answers before it. Returns what each
 * request got.
 */
async function session(client: DecoderClient, service: ServiceProcess) {
  const results: GeneratedToken[][] = [];
  /** Prefix-cache hits of each request, and its prompt's length. */
  const hits: Array<[number, number]> = [];
  const run = async (req: GenerateRequest) => {
    const before = await counter(service, 'loupe_decoder_prefix_cache_hits_total');
    const tokens = await generate(client, req);
    results.push(tokens);
    // The counter moves with the step that loads, before the tokens stream.
    const after = await counter(service, 'loupe_decoder_prefix_cache_hits_total');
    hits.push([after - before, req.promptTokenIds.length]);
    return tokens.map((t) => t.id);
  };
  const text = loadGoldenCase('tiny-text-only').inputIds;
  const question = [5, 17, 42, 99, 7, 300, 12];
  // A conversation: each turn resends the whole of it, with the answers.
  const first = await run(request(text));
  const second = await run(request([...text, ...first, ...question]));
  await run(request([...text, ...first, ...question, ...second, ...question.slice(2)]));
  // Seeded sampling on a prefix the cache holds.
  await run(
    request([...text, ...first], { sampling: { temperature: 1.1, topP: 0.9, seed: '31' } }),
  );
  // An image, resent as is (the hit ends inside its run of image tokens), then with a
  // follow-up; then the same rows under a content hash, twice.
  const photo = 'tiny-one-image-split-on';
  const answer = await run(imageRequest(photo));
  await run(imageRequest(photo));
  await run(imageRequest(photo, [...answer, ...question]));
  await run(imageRequest('tiny-two-images-split-off'));
  const hash = Buffer.alloc(32, 7);
  await run(imageRequest(photo, [], hash));
  await run(imageRequest(photo, question, hash));
  return { results, hits };
}

beforeAll(() => writeTinyModel({ out: modelDir, seed: 0 }));
afterAll(async () => {
  await stopServiceProcesses();
  rmSync(work, { recursive: true, force: true });
});

describe('prefix caching in the decoder', () => {
  const start = (cacheBytes: string) =>
    startServiceProcess(builtService('decoder'), {
      ...ephemeralPorts('DECODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_DECODER_THREADS: '1',
      LOUPE_DECODER_MAX_CONTEXT: '2048',
      LOUPE_DECODER_MAX_PREFILL_TOKENS: '64',
      LOUPE_DECODER_PREFIX_CACHE_BYTES: cacheBytes,
    });

  it('gives the same tokens with the cache on and off, and counts its hits', async () => {
    const [on, off] = await Promise.all([start(String(64 << 20)), start('0')]);
    const clients = [on, off].map(
      (s) => new DecoderClient(s.grpcAddress, credentials.createInsecure(), clientOptions),
    );
    try {
      const [on_, off_] = await Promise.all([session(clients[0]!, on), session(clients[1]!, off)]);
      const [cached, computed] = [on_!.results, off_!.results];
      // Hits, request by request (whole blocks of 16, never a prompt's last token): turn 2 and
      // 3 find the turns before them with their answers (24 tokens generated, 23 in the KV);
      // the photo resent hits 320 of 333 tokens, inside the run of its fifth sub-image
      // (positions 262 .. 325); a content hash is a different key from the rows' own, so the
      // first hashed request hits nothing (its first block holds image tokens), the second
      // all it can.
      expect(on_!.hits).toEqual([
        [0, 21],
        [32, 52],
        [64, 81],
        [32, 45],
        [0, 333],
        [320, 333],
        [352, 364],
        [0, 145],
        [0, 333],
        [320, 340],
      ]);
      expect(cached!.map((r) => r.map((t) => t.id))).toEqual(
        computed!.map((r) => r.map((t) => t.id)),
      );
      // Logprobs as well, to float precision (a chunk of another length sums differently).
      cached!.forEach((r, i) =>
        r.forEach((t, k) => expect(t.logprob).toBeCloseTo(computed![i]![k]!.logprob, 4)),
      );
      const hits = await counter(on, 'loupe_decoder_prefix_cache_hits_total');
      const queries = await counter(on, 'loupe_decoder_prefix_cache_queries_total');
      const prompts = await counter(on, 'loupe_decoder_prompt_tokens_total');
      expect(queries).toBe(prompts);
      expect(hits).toBeGreaterThan(0.5 * prompts);
      expect(await counter(off, 'loupe_decoder_prefix_cache_hits_total')).toBe(0);
      expect(await counter(off, 'loupe_decoder_prefix_cache_queries_total')).toBe(0);
    } finally {
      for (const c of clients) c.close();
    }
  });
});
