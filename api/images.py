"""Uploaded bytes -> a decoded image, with the HTTP status that fits what is wrong with them.

415: the bytes are not an image at all (a text file, random bytes).
400: they start like a PNG, JPEG, GIF, WebP, BMP or TIFF but cannot be used (truncated, corrupt,
     too many pixels), or they are empty.
The decoding itself is the project's one ``decode_image``, so the API accepts exactly what the
workers accept.
"""

from __future__ import annotations

from PIL import Image

from api.errors import ApiError
from twinstream.errors import ImageDecodeError
from twinstream.preprocess import decode_image


def decode_upload(data: bytes, max_pixels: int, field: str = "image") -> Image.Image:
    if not data:
        raise ApiError(400, f"{field}: the upload is empty (0 bytes)")
    try:
        return decode_image(data, max_pixels)
    except ImageDecodeError as exc:
        status = 400 if _has_known_image_header(data) else 415
        raise ApiError(status, f"{field}: {exc.message}") from None


# Signatures of the formats people upload; bytes that start like one of them are "that format,
# but broken" (400), anything else is "not an image" (415).
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*")


def _has_known_image_header(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
