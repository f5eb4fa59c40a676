import { describe, expect, it } from 'vitest';
import { pixelLookupTables, toPixelValues } from './pixel-values.js';
import { DEFAULT_IMAGE_PROCESSOR_CONFIG } from './processor-config.js';

const config = DEFAULT_IMAGE_PROCESSOR_CONFIG;

describe('pixelLookupTables', () => {
  it('is float32((float32(u8/255) - 0.5) / 0.5) for idefics2', () => {
    const [r] = pixelLookupTables(config);
    expect(r[0]).toBe(-1);
    expect(r[255]).toBe(1);
    for (let v = 0; v < 256; v++) {
      const x = Math.fround(v * (1 / 255));
      expect(r[v]).toBe(Math.fround(Math.fround(x - 0.5) / 0.5));
    }
    // A value where the float64 shortcut 2v/255 - 1 rounds differently would still match the
    // reference: the table is built step by step in float32.
    expect(r[128]).toBe(Math.fround(Math.fround(Math.fround(128 / 255) - 0.5) / 0.5));
  });

  it('honours do_rescale / do_normalize and per-channel mean/std', () => {
    const [r, g, b] = pixelLookupTables({
      ...config,
      doRescale: false,
      imageMean: [0, 10, 20],
      imageStd: [1, 2, 0.1],
    });
    expect(r[200]).toBe(200);
    expect(g[200]).toBe(95);
    expect(b[30]).toBe(Math.fround(10 / Math.fround(0.1)));
    const [raw] = pixelLookupTables({ ...config, doNormalize: false });
    expect(raw[51]).toBe(Math.fround(51 / 255));
  });
});

describe('toPixelValues', () => {
  it('pads bottom/right with 0.0 to the largest size and masks the real pixels', () => {
    const a = { height: 2, width: 3, pixels: new Uint8Array(18).fill(255) };
    const b = { height: 3, width: 1, pixels: new Uint8Array(9).fill(0) };
    const pv = toPixelValues([a, b], config);
    expect([pv.count, pv.height, pv.width]).toEqual([2, 3, 3]);
    expect(pv.pixelValues.length).toBe(2 * 3 * 3 * 3);
    const at = (i: number, c: number, y: number, x: number) =>
      pv.pixelValues[((i * 3 + c) * 3 + y) * 3 + x];
    expect(at(0, 2, 1, 2)).toBe(1);
    expect(at(0, 0, 2, 0)).toBe(0); // padding row
    expect(at(1, 1, 2, 0)).toBe(-1);
    expect(at(1, 1, 0, 1)).toBe(0); // padding column
    expect(Array.from(pv.pixelAttentionMask)).toEqual([
      1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0,
    ]);
  });

  it('checks its input', () => {
    expect(() => toPixelValues([], config)).toThrow(/at least one/);
    expect(() =>
      toPixelValues([{ height: 2, width: 2, pixels: new Uint8Array(3) }], config),
    ).toThrow(/2x2 but holds 3 bytes, expected 12/);
    const a = { height: 1, width: 1, pixels: new Uint8Array(3) };
    const b = { height: 2, width: 1, pixels: new Uint8Array(6) };
    expect(() => toPixelValues([a, b], { ...config, doPad: false })).toThrow(/do_pad is off/);
  });
});
