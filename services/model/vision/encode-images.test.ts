import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { InferenceSession } from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Checkpoint, openCheckpoint } from '../checkpoint/index.js';
import type { SubImage } from '../image/index.js';
import { createSession } from '../onnx/index.js';
import { writeTinyModel } from '../tiny/index.js';
import { encodeImages, visionInputs } from './encode-images.js';
import { visionPositionIds } from './position-ids.js';
import { buildVisionGraph } from './vision-graph.js';

/** A sub-image of seeded pseudo-random pixels. */
function subImage(width: number, height: number, seed: number): SubImage {
  let a = seed * 2654435761;
  const pixels = Uint8Array.from({ length: 3 * width * height }, () => {
    a = (Math.imul(a, 1103515245) + 12345) >>> 0;
    return a >>> 24;
  });
  return { width, height, pixels };
}

describe('visionInputs', () => {
  it('pads bottom/right with zeros and marks only patches fully inside each sub-image', () => {
    const small = subImage(20, 30, 1); // 1×2 full patches of 14 (cols × rows)
    const large = subImage(30, 42, 2); // canvas 42×30 -> 3×2 patches
    const input = visionInputs([small, large], { patchSize: 14, numPatchesPerSide: 70 });
    expect([input.count, input.height, input.width]).toEqual([2, 42, 30]);
    expect([input.patchRows, input.patchCols]).toEqual([3, 2]);
    // [image][row][col]: small has rows 0-1 and col 0 valid, large everything.
    expect([...input.patchMask]).toEqual([1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
    expect(input.positionIds.subarray(0, 6)).toEqual(
      visionPositionIds({ rows: 2, cols: 1, canvasRows: 3, canvasCols: 2, perSide: 70 }),
    );
    // pixel (c=1, y=29, x=19) of small, then zeros to the right and below
    const at = (i: number, c: number, y: number, x: number) =>
      input.pixels[((i * 3 + c) * 42 + y) * 30 + x];
    expect(at(0, 1, 29, 19)).toBe(small.pixels[(1 * 30 + 29) * 20 + 19]);
    expect(at(0, 1, 29, 20)).toBe(0);
    expect(at(0, 2, 30, 0)).toBe(0);
  });

  it('refuses a sub-image smaller than one patch or with the wrong byte count', () => {
    const geometry = { patchSize: 14, numPatchesPerSide: 70 };
    expect(() => visionInputs([subImage(13, 20, 1)], geometry)).toThrow(/smaller than one/);
    expect(() =>
      visionInputs([{ width: 20, height: 20, pixels: new Uint8Array(5) }], geometry),
    ).toThrow(/holds 5 bytes/);
    expect(() => visionInputs([], geometry)).toThrow(/at least one/);
  });
});

describe('encodeImages on the tiny checkpoint', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-encode-'));
  let session: InferenceSession;
  let checkpoint: Checkpoint;
  afterAll(async () => {
    await session?.release();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeAll(async () => {
    writeTinyModel({ out: dir, seed: 0 });
    checkpoint = openCheckpoint(dir);
    session = await createSession(buildVisionGraph(checkpoint));
  });

  it('gives each sub-image of a padded batch the result it gets alone', async () => {
    // Sides that are and are not multiples of 14, so partial edge patches must be dropped.
    const batch = [
      subImage(70, 43, 1),
      subImage(20, 20, 2),
      subImage(98, 112, 3),
      subImage(56, 29, 4),
    ];
    const together = await encodeImages(session, batch, checkpoint.config.vision);
    const [, latents, hidden] = together.dims;
    expect(together.dims).toEqual([4, 64, 64]);
    const block = latents * hidden;
    for (const [i, sub] of batch.entries()) {
      const alone = await encodeImages(session, [sub], checkpoint.config.vision);
      const part = together.data.subarray(i * block, (i + 1) * block);
      let max = 0;
      for (let j = 0; j < block; j++) max = Math.max(max, Math.abs(part[j]! - alone.data[j]!));
      expect(max, `sub-image ${i} (${sub.width}x${sub.height})`).toBeLessThanOrEqual(1e-5);
      expect(part.every(Number.isFinite)).toBe(true);
    }
  });
});
