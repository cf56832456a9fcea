"""Small JPEG thumbnails kept per indexed item, so result pages show images wherever they live."""

from __future__ import annotations

import io

from PIL import Image

THUMBNAIL_SIDE = 128
THUMBNAIL_QUALITY = 80


def make_thumbnail(img: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG no larger than ``side`` x ``side`` (aspect kept), a few KB at most."""
    thumb = img.convert("RGB") if img.mode != "RGB" else img.copy()
    if img.mode == "RGBA":  # transparent pixels would turn black in JPEG
        canvas = Image.new("RGB", img.size, (255, 255, 255))
        canvas.paste(img, mask=img.getchannel("A"))
        thumb = canvas
    thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buf.getvalue()
