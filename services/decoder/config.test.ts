// The decoder's configuration: the step-time budget's variable, its default, bounds and its
// check against the step watchdog.
import { describe, expect, it } from 'vitest';
import { loadDecoderConfig } from './config.js';

const base = { LOUPE_MODEL_DIR: '/models/x' };

describe('decoder configuration', () => {
  it('bounds a step with decode rows to 200 ms by default; 0 turns the budget off', () => {
    expect(loadDecoderConfig(base).maxStepMs).toBe(200);
    expect(loadDecoderConfig({ ...base, LOUPE_DECODER_MAX_STEP_MS: '0' }).maxStepMs).toBe(0);
    expect(() => loadDecoderConfig({ ...base, LOUPE_DECODER_MAX_STEP_MS: '-1' })).toThrow(
      /LOUPE_DECODER_MAX_STEP_MS/,
    );
    expect(() => loadDecoderConfig({ ...base, LOUPE_DECODER_MAX_STEP_MS: 'fast' })).toThrow(
      /LOUPE_DECODER_MAX_STEP_MS: must be an integer/,
    );
  });

  it('refuses a step budget the step watchdog would cut short', () => {
    expect(() => loadDecoderConfig({ ...base, LOUPE_DECODER_STEP_TIMEOUT_MS: '150' })).toThrow(
      'LOUPE_DECODER_MAX_STEP_MS: must be below LOUPE_DECODER_STEP_TIMEOUT_MS (150 ms), or 0',
    );
    const both = loadDecoderConfig({
      ...base,
      LOUPE_DECODER_STEP_TIMEOUT_MS: '150',
      LOUPE_DECODER_MAX_STEP_MS: '100',
    });
    expect([both.maxStepMs, both.stepTimeoutMs]).toEqual([100, 150]);
    expect(
      loadDecoderConfig({
        ...base,
        LOUPE_DECODER_STEP_TIMEOUT_MS: '150',
        LOUPE_DECODER_MAX_STEP_MS: '0',
      }).maxStepMs,
    ).toBe(0);
  });
});
