"""Small thumbnails kept per indexed item, so result pages show images wherever they live.

A thumbnail is a JPEG of at most ``THUMBNAIL_SIDE`` pixels a side, or, for an image that is
already that small and a few KB as a PNG or JPEG, the image's own bytes: encoding costs a worker
about as much CPU as decoding does, and a 64 px PNG is often smaller than its JPEG.
"""

from __future__ import annotations

import io

from PIL import Image

THUMBNAIL_SIDE = 128
THUMBNAIL_QUALITY = 80
# Largest original kept as its own thumbnail (a 128 px JPEG thumbnail is 2-5 KB).
KEEP_ORIGINAL_MAX_BYTES = 8192
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


def thumbnail_for(data: bytes, img: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """The thumbnail of an image given as its encoded ``data`` and its decoded ``img``: the
    bytes themselves when they are a small still PNG or JPEG that fits ``side`` (browsers show
    both as they are), else ``make_thumbnail(img)``."""
    if (len(data) <= KEEP_ORIGINAL_MAX_BYTES and img.width <= side and img.height <= side
            and (data.startswith(JPEG_SIGNATURE)
                 or (data.startswith(PNG_SIGNATURE) and b"acTL" not in data))):  # not an APNG
        return data
    return make_thumbnail(img, side)


def media_type(thumbnail: bytes) -> str:
    """The Content-Type a thumbnail is served with."""
    return "image/png" if thumbnail.startswith(PNG_SIGNATURE) else "image/jpeg"


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
