// Without the WebAssembly kernels (no .wasm, or no SIMD), resizing falls back to the JS
// passes with the same results.
import { describe, expect, it, vi } from 'vitest';
import {
  bilinearBackend,
  resizeBilinear,
  resizeBilinearChw,
  resizeBilinearJs,
  resizeCropsChw,
} from './bilinear.js';
import { toChw } from './rgb-image.js';
import { cropImage } from './split.js';

vi.mock('./bilinear-wasm.js', () => ({
  resizeWasm: () => null,
  wasmKernelStatus: () => ({ available: false, error: new Error('mocked away') }),
}));

describe('resizeBilinear without WebAssembly', () => {
  it('uses the JS passes', () => {
    expect(bilinearBackend()).toBe('js');
    const data = new Uint8Array(30 * 40 * 3).map((_, i) => (i * 37) & 255);
    const img = { height: 30, width: 40, data };
    const expected = resizeBilinearJs(img, 17, 23, { passOrder: 'pillow13' });
    expect(resizeBilinear(img, 17, 23, { passOrder: 'pillow13' })).toEqual(expected);
    expect(resizeBilinearChw(img, 17, 23, { passOrder: 'pillow13' })).toEqual(toChw(expected));
    const [piece] = resizeCropsChw(img, [{ y0: 3, y1: 20, x0: 5, x1: 40, height: 9, width: 50 }]);
    expect(piece).toEqual(toChw(resizeBilinearJs(cropImage(img, 3, 20, 5, 40), 9, 50)));
  });
});
