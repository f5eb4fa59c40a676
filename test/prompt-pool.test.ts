// The prompt pool's threads run at the lowest CPU priority (Linux nice is per thread), so one
// client's maximal prompts yield the CPU to everyone else's requests (docs/gateway.md).
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeTinyModel } from '../services/model/index.js';
import { repoRoot } from './helpers/service-process.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-prompt-pool-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** The nice value of each thread of this process (field 19 of /proc/self/task/<tid>/stat). */
const threadNices = () =>
  readdirSync('/proc/self/task').map((tid) => {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });

describe('the prompt pool', () => {
  it.runIf(process.platform === 'linux')(
    'tokenizes in threads at nice 19, not the caller',
    async () => {
      const modelDir = join(work, 'tiny');
      writeTinyModel({ out: modelDir, seed: 0 });
      // The pool loads its worker from the build, as the gateway does.
      const { PromptPool } = (await import(
        join(repoRoot, 'dist', 'services', 'gateway', 'prompt-pool.js')
      )) as typeof import('../services/gateway/prompt-pool.js');
      const pool = new PromptPool({ modelDir, threads: 1 });
      try {
        const ids = await pool.ids(
          {
            messages: [{ role: 'user', content: [{ type: 'text', text: 'hello there' }] }],
            escaped: false,
            splits: [],
            imageSeqLen: 64,
          },
          new AbortController().signal,
        );
        expect(ids.length).toBeGreaterThan(2);
        const nices = threadNices();
        expect(nices).toContain(19);
        expect(nices[0]).toBe(0); // the main thread keeps its priority
      } finally {
        await pool.close();
      }
    },
  );
});
