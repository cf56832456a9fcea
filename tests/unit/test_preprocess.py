import numpy as np
import pytest
from PIL import Image

from tests.imagegen import decompression_bomb, encode, gradient, hostile, unusual_but_valid
from twinstream.errors import ImageDecodeError
from twinstream.preprocess import Preprocessing, preprocess_bytes, preprocess_many

RGB = Preprocessing(height=32, width=32, channels=3)
GREY = Preprocessing(height=24, width=24, channels=1, mean=(0.5,), std=(0.5,))


@pytest.mark.parametrize("name", sorted(unusual_but_valid()))
@pytest.mark.parametrize("spec", [RGB, GREY], ids=["rgb", "grey"])
def test_unusual_images_decode_to_the_right_shape(name, spec):
    arr = preprocess_bytes(unusual_but_valid()[name], spec)
    assert arr.shape == spec.shape and arr.dtype == np.float32
    assert np.all(np.isfinite(arr))
    assert arr.min() >= -1.0 - 1e-6 and arr.max() <= 1.0 + 1e-6  # mean 0.5, std 0.5


@pytest.mark.parametrize("name", sorted(hostile()))
def test_hostile_bytes_raise_a_decode_error_with_a_reason(name):
    with pytest.raises(ImageDecodeError) as info:
        preprocess_bytes(hostile()[name], RGB, max_pixels=50_000_000)
    assert len(str(info.value)) > 10


def test_pixel_limit_is_explicit_and_configurable():
    big = encode(Image.new("RGB", (300, 300), "white"))
    assert preprocess_bytes(big, RGB, max_pixels=90_000).shape == RGB.shape
    with pytest.raises(ImageDecodeError, match="above the limit"):
        preprocess_bytes(big, RGB, max_pixels=89_999)
    with pytest.raises(ImageDecodeError):
        preprocess_bytes(decompression_bomb(), RGB)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), "white")
    img.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise on display: left half becomes top half
    arr = preprocess_bytes(encode(img, "JPEG", exif=exif.tobytes(), quality=95),
                           Preprocessing(height=20, width=20, channels=1, mean=(0,), std=(1,)))
    top, bottom = arr[0, :8].mean(), arr[0, 12:].mean()
    assert top < 0.2 and bottom > 0.8


def test_transparency_becomes_the_background_colour():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    spec = Preprocessing(height=10, width=10, mean=(0, 0, 0), std=(1, 1, 1),
                         background=(0, 0, 255))
    arr = preprocess_bytes(encode(img), spec)
    assert np.allclose(arr[:, 5, 5], [0, 0, 1])


def test_invert_and_normalisation():
    img = Image.new("L", (8, 8), 255)  # white page, no ink
    spec = Preprocessing(height=8, width=8, channels=1, mean=(0.0,), std=(1.0,), invert=True)
    assert np.allclose(preprocess_bytes(encode(img), spec), 0.0)


def test_pad_keeps_aspect_ratio():
    img = Image.new("RGB", (40, 10), (0, 0, 0))
    spec = Preprocessing(height=20, width=20, mean=(0, 0, 0), std=(1, 1, 1), fit="pad")
    arr = preprocess_bytes(encode(img), spec)
    assert np.allclose(arr[:, 0, 10], 1.0)  # padded rows are background (white)
    assert np.allclose(arr[:, 10, 10], 0.0)  # the image itself, centred


def test_batch_keeps_good_images_and_reports_bad_ones():
    good = encode(gradient())
    batch, kept, failed = preprocess_many([good, b"", good, b"junk"], RGB)
    assert batch.shape == (2, *RGB.shape)
    assert kept == [0, 2]
    assert set(failed) == {1, 3}


@pytest.mark.parametrize("kwargs", [dict(channels=2), dict(height=0), dict(std=(0, 1, 1)),
                                    dict(interpolation="magic"), dict(fit="zoom"),
                                    dict(mean=(0.5,))])
def test_invalid_preprocessing_is_refused(kwargs):
    with pytest.raises(ValueError):
        Preprocessing(**kwargs)


def test_round_trip_through_dict():
    spec = Preprocessing(height=105, width=105, channels=1, mean=(0.1,), std=(0.3,), invert=True)
    assert Preprocessing.from_dict(spec.to_dict()) == spec
