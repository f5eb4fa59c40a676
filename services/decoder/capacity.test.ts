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
    });
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
      /^the decoder needs 17\.\d MiB and the container's memory limit is 8\.0 MiB: KV slots 16\.0 MiB \(LOUPE_DECODER_MAX_RUNNING 8 × LOUPE_DECODER_MAX_CONTEXT 4096 tokens × 512 bytes of float32 KV per token\), prefix cache 1\.0 MiB/,
    );
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
