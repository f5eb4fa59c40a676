// The encoder's run memory budget: from the container's memory limit less what the loaded
// model and the cache hold, or as set; none by default with cuda.
import { describe, expect, it } from 'vitest';
import { defaultMemoryBudget } from '../runtime/index.js';
import { encoderMemoryBudget, loadEncoderConfig, MEMORY_LIMIT_SHARE } from './config.js';

const MiB = 2 ** 20;
const load = (env: Record<string, string> = {}) =>
  loadEncoderConfig({ LOUPE_MODEL_DIR: '/models/x', ...env });

describe('encoder memory budget', () => {
  it('defaults to 75% of the memory limit less the resident model and the cache', () => {
    const config = load({ LOUPE_ENCODER_CACHE_BYTES: String(100 * MiB) });
    expect(config.memoryBudgetBytes).toBe(0);
    // A 2 GiB container whose process holds 300 MiB once the model is loaded.
    const budget = encoderMemoryBudget(config, 300 * MiB, MEMORY_LIMIT_SHARE * 2048 * MiB);
    expect(budget.bytes).toBe((1536 - 300 - 100) * MiB);
    expect(budget.source).toMatch(
      /75% of the memory limit \(1610612736 bytes\) less the process's resident memory with the model loaded \(314572800\) and LOUPE_ENCODER_CACHE_BYTES \(104857600\)/,
    );
    // The share of the real limit (cgroup, else the machine) when none is given.
    expect(encoderMemoryBudget(config, 300 * MiB).bytes).toBe(
      Math.max(0, defaultMemoryBudget(MEMORY_LIMIT_SHARE) - 400 * MiB),
    );
    // Nothing left is 0, not negative.
    expect(encoderMemoryBudget(config, 2048 * MiB, 1536 * MiB).bytes).toBe(0);
  });

  it('takes a set budget as it is, and has none by default with cuda', () => {
    const set = load({ LOUPE_ENCODER_MEMORY_BUDGET_BYTES: String(300 * MiB) });
    expect(encoderMemoryBudget(set, 10 * 2 ** 30, 0)).toEqual({
      bytes: 300 * MiB,
      source: 'LOUPE_ENCODER_MEMORY_BUDGET_BYTES',
    });
    expect(
      encoderMemoryBudget(load({ LOUPE_ENCODER_EXECUTION_PROVIDER: 'cuda' }), 300 * MiB).bytes,
    ).toBe(Infinity);
    expect(() => load({ LOUPE_ENCODER_MEMORY_BUDGET_BYTES: '-1' })).toThrow(
      /LOUPE_ENCODER_MEMORY_BUDGET_BYTES/,
    );
  });
});
