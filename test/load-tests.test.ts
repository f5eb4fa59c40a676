// The k6 scenarios are type-checked with @types/k6 by `npm run typecheck`; this checks that
// every named scenario is there and has what k6 needs.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/service-process.js';

const dir = join(repoRoot, 'load-tests', 'scenarios');

describe('k6 scenarios', () => {
  it('has the xk6-sse entry point for true streaming TTFT', () => {
    const text = readFileSync(join(repoRoot, 'load-tests', 'sse.ts'), 'utf8');
    expect(text).toMatch(/export const options: Options = scenarioOptions\(name\)/);
    expect(readFileSync(join(repoRoot, 'load-tests', 'lib', 'chat-sse.ts'), 'utf8')).toMatch(
      /from 'k6\/x\/sse'/,
    );
  });

  it('has every named scenario, each exporting options (with thresholds) and a default function', () => {
    const names = readdirSync(dir)
      .map((f) => f.replace(/\.ts$/, ''))
      .sort();
    expect(names).toEqual([
      'decoder-grpc',
      'image-heavy',
      'ramp',
      'smoke',
      'soak',
      'spike',
      'throughput',
    ]);
    for (const name of names) {
      const text = readFileSync(join(dir, `${name}.ts`), 'utf8');
      expect(text, name).toMatch(/export const options: Options = /);
      if (name !== 'decoder-grpc') expect(text, name).toContain(`scenarioOptions('${name}')`);
      else expect(text).toMatch(/thresholds:/);
      expect(text, name).toMatch(/export default function \(\): void \{/);
    }
  });
});
