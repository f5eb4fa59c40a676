import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readSafetensors, readSafetensorsHeader } from './read.js';
import { writeSafetensors } from './write.js';

/** Written by testdata/make_testdata.py with the reference `safetensors` package. */
const REFERENCE = new URL('testdata/reference.safetensors', import.meta.url).pathname;

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tmpFile(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-st-'));
  dirs.push(dir);
  return join(dir, name);
}

/** A file from a header object and a data section, for malformed inputs. */
function rawFile(
  header: unknown,
  data: Uint8Array = new Uint8Array(0),
  headerText?: string,
): string {
  const text = Buffer.from(headerText ?? JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  const path = tmpFile('bad.safetensors');
  writeFileSync(path, Buffer.concat([len, text, data]));
  return path;
}

describe('readSafetensors', () => {
  it('reads a file written by the reference package, zero-copy', () => {
    const file = readSafetensors(REFERENCE);
    expect(file.metadata).toEqual({ format: 'np', note: 'loupe' });
    const t = Object.fromEntries(file);
    expect([...file.keys()].sort()).toEqual([
      'empty',
      'half',
      'ids',
      'mask',
      'positions',
      'scalar',
      'vision.weight',
    ]);
    expect(t['vision.weight']!.dtype).toBe('F32');
    expect(t['vision.weight']!.shape).toEqual([2, 3]);
    expect(Array.from(t['vision.weight']!.data as Float32Array)).toEqual([
      0, 0.25, 0.5, 0.75, 1, 1.25,
    ]);
    expect(Array.from(t['positions']!.data as BigInt64Array)).toEqual([0n, -1n, 2n ** 40n]);
    expect(Array.from(t['mask']!.data as Uint8Array)).toEqual([1, 0, 1, 1, 0]);
    expect(Array.from(t['half']!.data as Uint16Array)).toEqual([0x3c00, 0xc000, 0x3800]); // raw float16 bits
    expect(Array.from(t['ids']!.data as Int32Array)).toEqual([7, 8, 9, -10]);
    expect(t['scalar']!.shape).toEqual([]);
    expect(Array.from(t['scalar']!.data as Float32Array)).toEqual([3.5]);
    expect(t['empty']!.shape).toEqual([0, 4]);
    expect(t['empty']!.data.length).toBe(0);
    // Views share one buffer: the whole file.
    expect(t['ids']!.data.buffer).toBe(t['vision.weight']!.data.buffer);
  });

  it('reads only the header, with absolute offsets', () => {
    const header = readSafetensorsHeader(REFERENCE);
    const bytes = readFileSync(REFERENCE);
    const entry = header.tensors['vision.weight']!;
    expect(entry.byteLength).toBe(24);
    expect(
      new Float32Array(
        bytes.buffer.slice(bytes.byteOffset + entry.offset, bytes.byteOffset + entry.offset + 24),
      )[5],
    ).toBe(1.25);
    expect(header.dataOffset % 8).toBe(0);
  });
});

describe('writeSafetensors', () => {
  it('round-trips every dtype and keeps tensors aligned', () => {
    const path = tmpFile('rt.safetensors');
    const tensors = {
      a: { dtype: 'U8' as const, shape: [3], data: new Uint8Array([1, 2, 3]) },
      b: { dtype: 'F32' as const, shape: [2, 2], data: new Float32Array([1.5, -2, 3, 4]) },
      c: { dtype: 'I64' as const, shape: [2], data: new BigInt64Array([-5n, 2n ** 62n]) },
      d: { dtype: 'BF16' as const, shape: [1, 2], data: new Uint16Array([0x3f80, 0xc000]) },
      e: { dtype: 'F16' as const, shape: [1], data: new Uint16Array([0x3c00]) },
      f: { dtype: 'I32' as const, shape: [], data: new Int32Array([-7]) },
    };
    writeSafetensors(path, tensors, { metadata: { format: 'pt' } });
    const bytes = readFileSync(path);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    expect(headerLength % 8).toBe(0);
    expect(bytes.subarray(8, 8 + headerLength).toString('latin1')).toMatch(/^\{.*\} *$/);
    const back = readSafetensors(path);
    expect(back.metadata).toEqual({ format: 'pt' });
    for (const [name, t] of Object.entries(tensors)) {
      const r = back.get(name)!;
      expect(r.dtype).toBe(t.dtype);
      expect(r.shape).toEqual(t.shape);
      expect(Array.from(r.data as ArrayLike<unknown>)).toEqual(
        Array.from(t.data as ArrayLike<unknown>),
      );
      expect(r.data.byteOffset % r.data.BYTES_PER_ELEMENT).toBe(0);
    }
  });

  it('writes views of larger buffers and refuses inconsistent tensors', () => {
    const path = tmpFile('v.safetensors');
    const big = new Float32Array([9, 1, 2, 9]);
    writeSafetensors(path, { x: { dtype: 'F32', shape: [2], data: big.subarray(1, 3) } });
    expect(Array.from(readSafetensors(path).get('x')!.data as Float32Array)).toEqual([1, 2]);
    expect(() =>
      writeSafetensors(path, { x: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }),
    ).toThrow(/tensor `x`: F32 \[3\] needs 12 bytes, got 8/);
    expect(() =>
      writeSafetensors(path, { x: { dtype: 'F8' as never, shape: [1], data: new Uint8Array(1) } }),
    ).toThrow(/tensor `x`: unknown dtype "F8"/);
  });
});

describe('readSafetensors validation', () => {
  it.each([
    [
      'bad dtype',
      { w: { dtype: 'Q4', shape: [1], data_offsets: [0, 1] } },
      1,
      /bad\.safetensors: tensor `w`: unknown dtype "Q4"/,
    ],
    [
      'bad shape',
      { w: { dtype: 'U8', shape: [-1], data_offsets: [0, 1] } },
      1,
      /tensor `w`: shape must be non-negative integers/,
    ],
    [
      'size mismatch',
      { w: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } },
      4,
      /tensor `w`: F32 \[2\] needs 8 bytes, data_offsets span 4/,
    ],
    [
      'past the end',
      { w: { dtype: 'U8', shape: [8], data_offsets: [0, 8] } },
      4,
      /tensor `w`: data_offsets \[0,8\] run past the end/,
    ],
    [
      'gap',
      {
        a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] },
        b: { dtype: 'U8', shape: [1], data_offsets: [2, 3] },
      },
      3,
      /tensor `b` starts at data byte 2, expected 1/,
    ],
    [
      'trailing bytes',
      { a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } },
      5,
      /tensors cover 1 bytes of data but the file holds 5/,
    ],
    ['metadata', { __metadata__: { n: 1 } }, 0, /`__metadata__\.n` must be a string, got 1/],
  ])('%s', (_, header, dataBytes, message) => {
    expect(() => readSafetensors(rawFile(header, new Uint8Array(dataBytes)))).toThrow(message);
  });

  it('refuses a broken header', () => {
    expect(() => readSafetensors(rawFile(null, new Uint8Array(0), '[1]'))).toThrow(
      /header must start with '\{'/,
    );
    expect(() => readSafetensors(rawFile(null, new Uint8Array(0), '{"a": '))).toThrow(
      /header is not valid JSON/,
    );
    const short = tmpFile('short.safetensors');
    writeFileSync(short, Buffer.from([0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x7b]));
    expect(() => readSafetensors(short)).toThrow(
      /short\.safetensors: header length 65535 does not fit the file/,
    );
    expect(() => readSafetensorsHeader(short)).toThrow(/header length 65535 does not fit/);
  });
});
