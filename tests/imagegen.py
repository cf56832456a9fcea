"""Generated test images: ordinary, unusual-but-valid, and hostile ones (nothing downloaded)."""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient(size: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def unusual_but_valid() -> dict[str, bytes]:
    """Images a worker must embed, not reject."""
    base = gradient()
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    sixteen = Image.fromarray(np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40)
    exif_img = gradient(seed=1).resize((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    frames = [gradient(seed=s) for s in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return {
        "jpeg": encode(base, "JPEG", quality=90),
        "webp": encode(base, "WEBP"),
        "rgba_png": encode(rgba),
        "palette_png": encode(base.convert("P", palette=Image.Palette.ADAPTIVE)),
        "la_png": encode(base.convert("LA")),
        "grey_png": encode(base.convert("L")),
        "sixteen_bit_png": encode(sixteen),
        "cmyk_jpeg": encode(base.convert("CMYK"), "JPEG"),
        "exif_rotated_jpeg": encode(exif_img, "JPEG", exif=exif.tobytes()),
        "animated_gif": anim.getvalue(),
        "bmp": encode(base, "BMP"),
    }


@functools.cache
def decompression_bomb(side: int = 20_000) -> bytes:
    """A tiny PNG that claims side x side pixels (all zero rows, highly compressible)."""
    raw_row = b"\x00" + b"\x00" * side  # filter byte + greyscale row
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(raw_row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def hostile() -> dict[str, bytes]:
    """Bytes that must be rejected with a reason (dead-lettered by a worker)."""
    png = encode(gradient())
    jpeg = encode(gradient(), "JPEG")
    return {
        "truncated_png": png[: len(png) // 2],
        "truncated_jpeg": jpeg[: len(jpeg) // 3],
        "zero_bytes": b"",
        "random_bytes": os.urandom(2048),
        "text_file": b"hello, I am not an image\n" * 20,
        "decompression_bomb": decompression_bomb(),
    }


def write_glyphs(root, parents: int = 2, classes_per_parent: int = 6, per_class: int = 6,
                 size: int = 24, seed: int = 0) -> list[str]:
    """Omniglot-like data: ``parent/classNN/`` folders of greyscale PNGs, dark strokes on white.

    A class is three random strokes; its images draw them with a little jitter (a drawer's
    hand), so classes are learnable and images of one class differ. Returns the class names.
    """
    from pathlib import Path

    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    names = []
    for p in range(parents):
        for c in range(classes_per_parent):
            name = f"script{p}/glyph{c:02d}"
            strokes = rng.uniform(3, size - 3, size=(3, 4))
            folder = Path(root) / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                img = Image.new("L", (size, size), 255)
                draw = ImageDraw.Draw(img)
                for stroke in strokes + rng.normal(scale=1.0, size=strokes.shape):
                    draw.line([tuple(stroke[:2]), tuple(stroke[2:])], fill=0, width=2)
                img.save(folder / f"{k:02d}.png")
            names.append(name)
    return names
