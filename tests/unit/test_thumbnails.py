"""Thumbnails: small JPEGs of any decoded image, without touching the image they come from."""

import io

from PIL import Image

from twinstream.thumbnails import THUMBNAIL_SIDE, make_thumbnail


def opened(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG"
    return img


def test_a_large_image_shrinks_to_the_side_keeping_its_aspect_and_the_original_stays():
    img = Image.new("RGB", (400, 200), (200, 10, 10))
    thumb = opened(make_thumbnail(img))
    assert thumb.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    assert img.size == (400, 200)  # resized on a copy


def test_a_small_image_keeps_its_size_and_colour():
    img = Image.new("RGB", (40, 30), (10, 200, 10))
    thumb = opened(make_thumbnail(img))
    assert thumb.size == (40, 30) and thumb.mode == "RGB"
    r, g, b = thumb.getpixel((20, 15))
    assert g > 180 and r < 40 and b < 40


def test_greyscale_stays_greyscale_and_transparency_becomes_white():
    assert opened(make_thumbnail(Image.new("L", (20, 20), 90))).mode == "L"
    clear = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert opened(make_thumbnail(clear)).convert("RGB").getpixel((10, 10)) >= (250, 250, 250)
