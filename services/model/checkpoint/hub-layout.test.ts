// A checkpoint laid out like the Hugging Face hub cache (every file of the snapshot a symlink
// into ../../blobs/) loads without anything being written into it: graphs stay in memory and
// ONNX Runtime reads the weights from the real files.
import { mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSession } from '../onnx/index.js';
import { generateGreedy, loadTextModel } from '../language-model/index.js';
import { writeTinyModel } from '../tiny/index.js';
import { buildVisionGraph, encodeImages } from '../vision/index.js';
import { openCheckpoint } from './index.js';

const root = mkdtempSync(join(tmpdir(), 'loupe-hub-'));
const plain = join(root, 'plain');
const repo = join(root, 'hub', 'models--loupe--tiny');
const snapshot = join(repo, 'snapshots', '0123abcd');

beforeAll(() => {
  writeTinyModel({ out: plain, seed: 3 });
  const copy = join(root, 'copy');
  writeTinyModel({ out: copy, seed: 3 });
  mkdirSync(join(repo, 'blobs'), { recursive: true });
  mkdirSync(snapshot, { recursive: true });
  for (const [i, name] of readdirSync(copy).entries()) {
    renameSync(join(copy, name), join(repo, 'blobs', `blob${i}`));
    symlinkSync(join('..', '..', 'blobs', `blob${i}`), join(snapshot, name));
  }
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('a Hugging Face hub snapshot (symlinks into blobs/)', () => {
  it('runs the vision and text graphs as the plain directory does, writing nothing', async () => {
    const before = { snapshot: readdirSync(snapshot), blobs: readdirSync(join(repo, 'blobs')) };
    const hub = openCheckpoint(snapshot);
    const local = openCheckpoint(plain);
    const sub = { width: 42, height: 28, pixels: new Uint8Array(3 * 42 * 28).fill(77) };

    const encode = async (checkpoint: typeof hub) => {
      const session = await createSession(buildVisionGraph(checkpoint), { intraOpThreads: 1 });
      try {
        return (await encodeImages(session, [sub], checkpoint.config.vision)).data;
      } finally {
        await session.release();
      }
    };
    expect(await encode(hub)).toEqual(await encode(local));

    const generate = async (checkpoint: typeof hub) => {
      const model = await loadTextModel(checkpoint, { session: { intraOpThreads: 1 } });
      try {
        const result = await generateGreedy(model, [{ ids: [1, 5, 9, 13, 17] }], {
          maxNewTokens: 6,
          eosTokenIds: [],
        });
        return result.sequences[0]!;
      } finally {
        await model.release();
      }
    };
    const [fromHub, fromLocal] = [await generate(hub), await generate(local)];
    expect(fromHub.generatedIds).toEqual(fromLocal.generatedIds);
    expect(fromHub.prefillLogits).toEqual(fromLocal.prefillLogits);

    expect({ snapshot: readdirSync(snapshot), blobs: readdirSync(join(repo, 'blobs')) }).toEqual(
      before,
    );
  });
});
