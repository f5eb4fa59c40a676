#!/usr/bin/env python3
"""Small decoder edge cases beyond test/fixtures, with what the reference makes of them.

Writes the files below next to this script, and expected.json: for each file, the sha256 of
`transformers.image_utils.load_image(path)` (PIL exif_transpose + convert("RGB")) as HWC uint8,
and its size. decode.test.ts checks decodeImage against it. Deterministic (fixed seed).

Usage: /work/venv-ref/bin/python services/model/image/testdata/make_testdata.py
"""

import hashlib
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin
from transformers.image_utils import load_image

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20240601)
XMP6 = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def path(name: str) -> str:
    return os.path.join(HERE, name)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(name: str, rows: bytes, width: int, height: int, depth: int, colour: int, extra: bytes = b"", plte: bytes = b""):
    """rows: unfiltered scanlines, concatenated."""
    stride = len(rows) // height
    raw = b"".join(b"\0" + rows[y * stride : (y + 1) * stride] for y in range(height))
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if plte:
        data += png_chunk(b"PLTE", plte)
    data += extra + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    open(path(name), "wb").write(data)


def lzw(indices: np.ndarray, min_code: int) -> bytes:
    """GIF LZW without string reuse: a clear code before the code width would grow."""
    clear, end, width = 1 << min_code, (1 << min_code) + 1, min_code + 1
    out, acc, bits, count = bytearray(), 0, 0, 0

    def emit(code: int) -> None:
        nonlocal acc, bits
        acc |= code << bits
        bits += width
        while bits >= 8:
            out.append(acc & 255)
            acc >>= 8
            bits -= 8

    emit(clear)
    for i in indices.ravel():
        emit(int(i))
        count += 1
        if count >= (1 << min_code) - 3:
            emit(clear)
            count = 0
    emit(end)
    if bits:
        out.append(acc & 255)
    return bytes(out)


def write_gif(name, screen, table, frame, rect, local=None, transparent=None, background=0):
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80 | 3, background, 0) + table)
    if transparent is not None:
        out += bytes([0x21, 0xF9, 4, 1, 0, 0, transparent, 0])
    out += b"," + struct.pack("<HHHHB", *rect, (0x80 | 3) if local is not None else 0) + (local or b"")
    data = lzw(frame, 4)
    out += bytes([4]) + b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    out += b"\0;"
    open(path(name), "wb").write(bytes(out))


def noise(*shape, high=256, dtype=np.uint8):
    return rng.integers(0, high, shape, dtype=dtype)


files = []
# 16-bit grey + alpha: PIL opens it as RGBA from the high bytes.
write_png("la16.png", noise(12, 16, 2, high=65536, dtype=np.uint16).astype(">u2").tobytes(), 16, 12, 16, 4)
# 16-bit grey with a tRNS colour key: still I;16, so clipped at 255 (libvips adds alpha).
g16 = noise(12, 16, high=65536, dtype=np.uint16)
g16[0, :10] = [0, 1, 255, 256, 257, 1000, 32768, 65535, 254, 300]
g16[5:8] = 200
write_png("grey16-trns.png", g16.astype(">u2").tobytes(), 16, 12, 16, 0, png_chunk(b"tRNS", struct.pack(">H", 200)))
# 2-bit grey and 1-bit palette: sub-byte samples.
g2 = noise(12, 16, high=4)
write_png("grey2.png", bytes(np.packbits(np.unpackbits(g2[..., None], axis=2)[..., 6:].reshape(12, -1), axis=1).ravel()), 16, 12, 2, 0)
p1 = noise(12, 16, high=2)
write_png("pal1.png", bytes(np.packbits(p1, axis=1).ravel()), 16, 12, 1, 3, plte=noise(6).tobytes())
# RGB with a tRNS colour key: transparency ignored by convert("RGB").
rgb = noise(12, 16, 3)
rgb[:3] = (10, 20, 30)
write_png("rgb-trns.png", rgb.tobytes(), 16, 12, 8, 2, png_chunk(b"tRNS", struct.pack(">HHH", 10, 20, 30)))
# XMP-only orientation (PIL's getexif falls back to tiff:Orientation in XMP).
info = PngImagePlugin.PngInfo()
info.add_itxt("XML:com.adobe.xmp", XMP6)
Image.fromarray(noise(12, 16, 3)).save(path("xmp6.png"), pnginfo=info)
Image.fromarray(noise(12, 16, 3)).save(path("xmp6.jpg"), xmp=XMP6.encode(), quality=90)
# TIFF: 16-bit grey (I;16), CMYK, orientation tag.
Image.fromarray(noise(12, 16, high=65536, dtype=np.uint16)).save(path("grey16.tif"))
Image.frombytes("CMYK", (16, 12), noise(12, 16, 4).tobytes()).save(path("cmyk.tif"))
exif = Image.Exif()
exif[0x0112] = 6
Image.fromarray(noise(12, 16, 3)).save(path("orient6.tif"), exif=exif)
# WebP: EXIF orientation 8, and an animation (first frame only).
exif8 = Image.Exif()
exif8[0x0112] = 8
Image.fromarray(noise(12, 16, 3)).save(path("orient8.webp"), exif=exif8.tobytes(), lossless=True)
frames = [Image.fromarray(noise(12, 16, 3)) for _ in range(3)]
frames[0].save(path("anim.webp"), save_all=True, append_images=frames[1:], lossless=True)
# GIF: local colour table with a transparent index; a first frame smaller than the screen,
# without and with transparency (PIL shows palette[0] / palette[transparent] around it).
table, local, frame = noise(48).tobytes(), noise(48).tobytes(), noise(12, 16, high=16)
write_gif("gif-lct-trns.gif", (16, 12), table, frame, (0, 0, 16, 12), local=local, transparent=3)
write_gif("gif-small-frame.gif", (22, 17), table, frame, (4, 3, 16, 12), background=9)
write_gif("gif-small-frame-trns.gif", (22, 17), table, frame, (4, 3, 16, 12), transparent=5)

expected = {}
for name in sorted(os.listdir(HERE)):
    if name.endswith((".py", ".json")):
        continue
    img = load_image(path(name))
    arr = np.asarray(img)
    expected[name] = {
        "pil_mode": Image.open(path(name)).mode,
        "height": img.height,
        "width": img.width,
        "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
    }
with open(path("expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")
print(json.dumps(expected, indent=1))
