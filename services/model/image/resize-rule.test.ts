import { describe, expect, it } from 'vitest';
import { resizeOutputSize } from './resize-rule.js';

const bounds = { shortestEdge: 378, longestEdge: 980 };

/** A line-by-line port of the reference's get_resize_output_image_size, for comparison. */
function reference(height: number, width: number, minLen = 378, maxLen = 980): [number, number] {
  const aspectRatio = width / height;
  if (width >= height && width > maxLen) {
    width = maxLen;
    height = Math.trunc(width / aspectRatio);
  } else if (height > width && height > maxLen) {
    height = maxLen;
    width = Math.trunc(height * aspectRatio);
  }
  return [Math.max(height, minLen), Math.max(width, minLen)];
}

/** Deterministic 32-bit LCG so the random cases are the same on every run. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

describe('resizeOutputSize', () => {
  it('clamps each side to shortest_edge on its own (no upscale otherwise)', () => {
    expect(resizeOutputSize(200, 300, bounds)).toEqual({ height: 378, width: 378 });
    expect(resizeOutputSize(200, 980, bounds)).toEqual({ height: 378, width: 980 });
    expect(resizeOutputSize(378, 378, bounds)).toEqual({ height: 378, width: 378 });
    expect(resizeOutputSize(500, 379, bounds)).toEqual({ height: 500, width: 379 });
    expect(resizeOutputSize(980, 980, bounds)).toEqual({ height: 980, width: 980 });
  });

  it('brings the longer side to longest_edge, truncating the other', () => {
    expect(resizeOutputSize(1600, 2400, bounds)).toEqual({ height: 653, width: 980 });
    expect(resizeOutputSize(1067, 1600, bounds)).toEqual({ height: 653, width: 980 });
    expect(resizeOutputSize(1307, 1961, bounds)).toEqual({ height: 653, width: 980 });
    expect(resizeOutputSize(700, 981, bounds)).toEqual({ height: 699, width: 980 });
    expect(resizeOutputSize(3000, 1000, bounds)).toEqual({ height: 980, width: 378 });
    expect(resizeOutputSize(2000, 1000, bounds)).toEqual({ height: 980, width: 490 });
    expect(resizeOutputSize(2400, 1080, bounds)).toEqual({ height: 980, width: 441 });
    // Width >= height wins ties; a thin strip still gets shortest_edge rows.
    expect(resizeOutputSize(120, 3000, bounds)).toEqual({ height: 378, width: 980 });
    expect(resizeOutputSize(2500, 100, bounds)).toEqual({ height: 980, width: 378 });
  });

  it('matches the reference for random sizes in [30, 400)', () => {
    const rand = lcg(42);
    for (let i = 0; i < 1000; i++) {
      const h = 30 + Math.floor(rand() * 370);
      const w = 30 + Math.floor(rand() * 370);
      const [rh, rw] = reference(h, w);
      expect(resizeOutputSize(h, w, bounds)).toEqual({ height: rh, width: rw });
      // Below longest_edge nothing shrinks: only the clamp applies.
      expect([rh, rw]).toEqual([Math.max(h, 378), Math.max(w, 378)]);
    }
  });

  it('matches the reference for random sizes up to 10000', () => {
    const rand = lcg(7);
    for (let i = 0; i < 5000; i++) {
      const h = 1 + Math.floor(rand() * 10000);
      const w = 1 + Math.floor(rand() * 10000);
      const [rh, rw] = reference(h, w);
      expect(resizeOutputSize(h, w, bounds)).toEqual({ height: rh, width: rw });
    }
  });

  it('follows other bounds', () => {
    expect(resizeOutputSize(1000, 500, { shortestEdge: 100, longestEdge: 200 })).toEqual({
      height: 200,
      width: 100,
    });
  });
});
