"""Thumbnails: small pictures of any decoded image, without touching the image they come from."""

import io

from PIL import Image

from twinstream.thumbnails import THUMBNAIL_SIDE, make_thumbnail, media_type, thumbnail_for


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


def encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def test_a_small_still_png_or_jpeg_is_its_own_thumbnail_and_is_served_as_what_it_is():
    img = Image.new("RGB", (64, 48), (10, 20, 200))
    for fmt, served in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        data = encoded(img, fmt)
        assert thumbnail_for(data, img) == data
        assert media_type(data) == served


def test_a_large_an_animated_or_a_heavy_image_gets_an_encoded_jpeg():
    large = Image.new("RGB", (300, 200), (200, 10, 10))
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    apng = encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    noisy = Image.frombytes("RGB", (128, 128), bytes(range(256)) * 192)
    heavy = encoded(noisy, "PNG", compress_level=0)
    assert len(heavy) > 8192
    for data, img in ((encoded(large, "PNG"), large), (apng, frames[0]), (heavy, noisy)):
        thumb = thumbnail_for(data, img)
        assert thumb != data and opened(thumb).size[0] <= THUMBNAIL_SIDE
        assert media_type(thumb) == "image/jpeg"
