// The generated TypeScript under proto/gen/ must be what the .proto files generate now.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/service-process.js';

function listFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? listFiles(path) : [path];
  });
}

describe('generated proto code', () => {
  const out = mkdtempSync(join(tmpdir(), 'loupe-proto-'));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it('is fresh (run `npm run proto:gen` after changing proto/)', () => {
    execFileSync(process.execPath, [join(repoRoot, 'scripts', 'proto-gen.mjs'), '--out', out], {
      stdio: 'pipe',
    });
    const committed = join(repoRoot, 'proto', 'gen');
    const fresh = listFiles(out)
      .map((f) => relative(out, f))
      .sort();
    expect(
      listFiles(committed)
        .map((f) => relative(committed, f))
        .sort(),
    ).toEqual(fresh);
    for (const file of fresh) {
      expect(readFileSync(join(committed, file), 'utf8'), `proto/gen/${file} is stale`).toBe(
        readFileSync(join(out, file), 'utf8'),
      );
    }
  });
});
