"""Small JPEG thumbnails kept per indexed item, so result pages show images wherever they live."""

from __future__ import annotations

import io

from PIL import Image

THUMBNAIL_SIDE = 128
THUMBNAIL_QUALITY = 80


def make_thumbnail(img: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG no larger than ``side`` x ``side`` (aspect kept), a few KB at most.

    The worker makes one per indexed image, so this avoids every copy it can: an RGB image that
    already fits is encoded as it is. ``optimize`` stays: on 64 px images its second pass costs
    ~30 % more encoding time but the JPEG is ~28 % smaller, which is Redis memory for every item
    (workers that need neither set ``TWINSTREAM_WORKER_THUMBNAILS=false``).
    """
    if img.mode == "RGBA":  # transparent pixels would turn black in JPEG
        thumb = Image.new("RGB", img.size, (255, 255, 255))
        thumb.paste(img, mask=img.getchannel("A"))
    elif img.mode not in ("RGB", "L"):  # a greyscale JPEG is a third of the work and bytes
        thumb = img.convert("RGB")
    elif img.width > side or img.height > side:
        thumb = img.copy()  # thumbnail() resizes in place; the caller still needs the original
    else:
        thumb = img
    if thumb.width > side or thumb.height > side:
        thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buf.getvalue()
