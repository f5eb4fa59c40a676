// The KV settings are checked at start: a context past the model's positions, or KV past the
// machine's memory, stops the decoder with exit code 2 and a message naming the variables.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtService, ephemeralPorts } from '../../test/helpers/service-process.js';
import { openCheckpoint, writeTinyModel } from '../model/index.js';
import { ConfigError } from '../runtime/index.js';
import { checkKvCapacity, planKv } from './capacity.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-decoder-capacity-'));
const modelDir = join(work, 'tiny-seed0');
beforeAll(() => writeTinyModel({ out: modelDir, seed: 0 }));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const settings = {
  maxRunning: 4,
  maxContext: 1024,
  maxPrefillTokens: 512,
  prefixCacheBytes: 1 << 20,
  executionProvider: 'cpu' as const,
};
const plenty = { bytes: 2 ** 40, what: 'the physical memory' };

describe('checkKvCapacity', () => {
  it('sizes the slots and the prefix cache from the model', () => {
    // The tiny model: 2 layers × K and V × 2 KV heads × head dim 16 × float32.
    const perToken = 2 * 2 * 2 * 16 * 4;
    expect(planKv(openCheckpoint(modelDir), settings)).toEqual({
      cacheType: 'float32',
      bytesPerToken: perToken,
      slotBytes: 4 * 1024 * perToken,
      prefixCacheBlocks: Math.floor((1 << 20) / (16 * perToken)),
      prefixCacheBytes: Math.floor((1 << 20) / (16 * perToken)) * 16 * perToken,
      // A 512-token chunk against 1,024 positions (4 heads; intermediate 128, hidden 64) is
      // larger than a decode step of 4 rows.
      activationBytes: 4 * (2 * 4 * 512 * 1024 + 512 * (3 * 128 + 6 * 64)),
    });
    // On CUDA the activations are the device's.
    expect(
      planKv(openCheckpoint(modelDir), { ...settings, executionProvider: 'cuda' }).activationBytes,
    ).toBe(0);
    expect(planKv(openCheckpoint(modelDir), { ...settings, prefixCacheBytes: 0 })).toMatchObject({
      prefixCacheBlocks: 0,
      prefixCacheBytes: 0,
    });
    expect(checkKvCapacity(openCheckpoint(modelDir), settings, plenty).slotBytes).toBe(
      4 * 1024 * perToken,
    );
  });

  it("refuses a context past the model's positions, and KV past the memory", () => {
    const checkpoint = openCheckpoint(modelDir);
    const check =
      (s: Partial<typeof settings>, memory = plenty) =>
      () =>
        checkKvCapacity(checkpoint, { ...settings, ...s }, memory);
    expect(check({ maxContext: 4096 })).not.toThrow();
    expect(check({ maxContext: 4097 })).toThrow(ConfigError);
    expect(check({ maxContext: 4097 })).toThrow(
      /^LOUPE_DECODER_MAX_CONTEXT is 4097 tokens, past the model's 4096 positions \(max_position_embeddings in .*config\.json\)/,
    );
    const small = { bytes: 8 * 2 ** 20, what: "the container's memory limit" };
    expect(check({ maxRunning: 8, maxContext: 4096 }, small)).toThrow(
      /^the decoder needs \d+\.\d MiB and the container's memory limit is 8\.0 MiB: KV slots 16\.0 MiB \(LOUPE_DECODER_MAX_RUNNING 8 × LOUPE_DECODER_MAX_CONTEXT 4096 tokens × 512 bytes of float32 KV per token\), prefix cache 1\.0 MiB/,
    );
    // The activations alone: a 4,096-token chunk against 4,096 positions.
    const roomForKv = { bytes: 40 * 2 ** 20, what: "the container's memory limit" };
    expect(check({ maxContext: 4096, maxPrefillTokens: 64 }, roomForKv)).not.toThrow();
    expect(check({ maxContext: 4096, maxPrefillTokens: 4096 }, roomForKv)).toThrow(
      /the largest step's activations \d+\.\d MiB \(LOUPE_DECODER_MAX_PREFILL_TOKENS 4096 against the context, or every slot decoding\); lower .* or LOUPE_DECODER_MAX_PREFILL_TOKENS$/,
    );
  });
});

// Against reality: a child process loads the checkpoint as the decoder does (CPU, the
// adaptive graph, OrtModelRunner), prefills one sequence to the end of the context in chunks,
// and reports how far its peak resident memory (VmHWM, reset by clear_refs 5 after a warm-up
// chunk) rose, less the KV the chunks wrote into the slots (pages first touched then).
const PROBE = `
import { readFileSync, writeFileSync } from 'node:fs';
const [modelUrl, runnerUrl, dir, chunk, context] = process.argv.slice(1);
const M = await import(modelUrl);
const { OrtModelRunner } = await import(runnerUrl);
const field = (name) =>
  Number(new RegExp('^' + name + ':\\\\s+(\\\\d+) kB', 'm').exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
const checkpoint = M.openCheckpoint(dir);
const model = await M.loadTextModel(checkpoint, { session: { intraOpThreads: 1 }, attention: 'adaptive' });
const C = Number(context);
const S = Number(chunk);
const runner = new OrtModelRunner(model, { slots: 1, context: C, cacheBlocks: 0 });
const step = (start, n) => ({
  loads: [], saves: [], decode: [], greedy: true, span: start + n,
  prefill: [{ slot: 0, start, tokens: Array.from({ length: n }, (_, i) => 3 + ((start + i) % 200)),
    imageRows: new Float32Array(0), sample: true }],
});
await runner.run(step(0, 4));
const before = field('VmRSS');
writeFileSync('/proc/self/clear_refs', '5');
for (let start = 0; start < C; start += S) await runner.run(step(start, Math.min(S, C - start)));
const t = checkpoint.config.text;
const kv = C * t.numHiddenLayers * 2 * t.numKeyValueHeads * t.headDim * 4;
process.stdout.write(JSON.stringify({ growth: field('VmHWM') - before - kv }));
`;

async function measuredGrowth(chunk: number, context: number): Promise<number> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      PROBE,
      new URL('../../dist/services/model/index.js', import.meta.url).href,
      new URL('../../dist/services/decoder/ort-runner.js', import.meta.url).href,
      modelDir,
      String(chunk),
      String(context),
    ],
    { timeout: 60_000 },
  );
  return (JSON.parse(stdout) as { growth: number }).growth;
}

describe('the activation estimate against measured prompts', () => {
  it('is above the peak memory a prompt of chunks adds, and within 3× of it', async () => {
    const cases: Array<[number, number]> = [
      [256, 1024],
      [512, 4096],
    ];
    for (const [chunk, context] of cases) {
      const estimate = planKv(openCheckpoint(modelDir), {
        ...settings,
        maxRunning: 1,
        maxContext: context,
        maxPrefillTokens: chunk,
      }).activationBytes;
      const measured = await measuredGrowth(chunk, context);
      const name = `${chunk}-token chunks to ${context}: measured ${(measured / 2 ** 20).toFixed(1)} MiB, estimated ${(estimate / 2 ** 20).toFixed(1)} MiB`;
      expect(measured, name).toBeGreaterThan(0);
      expect(estimate, name).toBeGreaterThan(measured);
      expect(estimate, name).toBeLessThan(3 * measured);
    }
  });
});

describe('the decoder process', () => {
  const start = (env: Record<string, string>) =>
    promisify(execFile)(process.execPath, [builtService('decoder')], {
      env: { ...process.env, ...ephemeralPorts('DECODER'), LOUPE_MODEL_DIR: modelDir, ...env },
    }).then(
      () => ({ code: 0, stderr: '' }),
      (error: { code: number; stderr: string }) => error,
    );

  it('exits 2 naming the variable when the context or the KV cannot fit', async () => {
    const context = await start({ LOUPE_DECODER_MAX_CONTEXT: '8192' });
    expect(context.code).toBe(2);
    expect(context.stderr).toMatch(
      /loupe decoder: LOUPE_DECODER_MAX_CONTEXT is 8192 tokens, past the model's 4096 positions/,
    );
    const memory = await start({ LOUPE_DECODER_PREFIX_CACHE_BYTES: String(2 ** 50) });
    expect(memory.code).toBe(2);
    expect(memory.stderr).toMatch(
      /loupe decoder: the decoder needs 1048576\.\d GiB and the (physical memory|container's memory limit) is .*prefix cache 1048576\.0 GiB \(LOUPE_DECODER_PREFIX_CACHE_BYTES\)/,
    );
  });
});
