// docs/configuration.md is generated from the configuration schemas; it must match them.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configurationReference } from '../scripts/config-reference.js';
import { decoderEnvSchema } from '../services/decoder/config.js';
import { gatewayEnvSchema } from '../services/gateway/config.js';
import { repoRoot } from './helpers/service-process.js';

describe('the configuration reference', () => {
  const generated = configurationReference();

  it('is up to date (run `npm run docs:config` after changing a configuration schema)', () => {
    expect(readFileSync(join(repoRoot, 'docs', 'configuration.md'), 'utf8')).toBe(generated);
  });

  it('lists every variable with its default', () => {
    for (const name of [
      ...Object.keys(gatewayEnvSchema.shape),
      ...Object.keys(decoderEnvSchema.shape),
    ])
      expect(generated, name).toContain(`| \`${name}\` |`);
    expect(generated).toMatch(/\| `LOUPE_DECODER_MAX_RUNNING` \| `16` \| 1 to 1024 \|/);
    expect(generated).toMatch(/\| `LOUPE_MODEL_DIR` \| required \|/);
  });
});
