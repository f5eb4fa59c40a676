// The preprocessor's capacity defaults: threads from the container's CPU limit, the memory
// budget from its memory limit, each overridable.
import { describe, expect, it } from 'vitest';
import { cpuBoundThreads, defaultMemoryBudget } from '../runtime/index.js';
import { loadPreprocessorConfig, memoryBudgetBytes } from './config.js';

describe('preprocessor capacity configuration', () => {
  it('defaults its worker threads to the cores the container may use', () => {
    expect(loadPreprocessorConfig({}).workers).toBe(cpuBoundThreads());
    expect(loadPreprocessorConfig({ LOUPE_PREPROCESSOR_WORKERS: '3' }).workers).toBe(3);
  });

  it('defaults its memory budget to half the container limit, and takes a set one', () => {
    expect(memoryBudgetBytes(loadPreprocessorConfig({}))).toBe(defaultMemoryBudget(0.5));
    expect(
      memoryBudgetBytes(
        loadPreprocessorConfig({ LOUPE_PREPROCESSOR_MEMORY_BUDGET_BYTES: String(300 << 20) }),
      ),
    ).toBe(300 << 20);
    expect(() => loadPreprocessorConfig({ LOUPE_PREPROCESSOR_MEMORY_BUDGET_BYTES: '-1' })).toThrow(
      /LOUPE_PREPROCESSOR_MEMORY_BUDGET_BYTES/,
    );
  });
});
