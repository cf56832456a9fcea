"""The one preprocessing: image bytes -> the encoder's float32 input ``[C, H, W]``.

Training, export's parity check, the worker and every query call ``preprocess_bytes`` with the
``Preprocessing`` that travels inside the ONNX model card, so an image is embedded the same way
everywhere. It is torch-free on purpose (numpy + Pillow only).

Decoding is defensive because the worker meets hostile input: every failure is an
``ImageDecodeError`` with a reason a person can act on, never a Pillow exception.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from twinstream.errors import ImageDecodeError
from twinstream.fields import printable

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the camera was held

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
FITS = ("stretch", "pad")
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn an image into encoder input; stored in the model card."""

    height: int = 64
    width: int = 64
    channels: int = 3  # 1 = grayscale, 3 = RGB
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    # "stretch" resizes to height x width; "pad" keeps the aspect ratio and fills with background.
    fit: str = "stretch"
    # Transparent pixels are composited onto this colour before anything else.
    background: tuple[int, int, int] = (255, 255, 255)
    # After scaling to [0, 1], x -> 1 - x. Omniglot-style data has black ink on white; inverted,
    # the ink is 1 and the empty page 0, which is what a conv net learns from best.
    invert: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.height < 1 or self.width < 1:
            problems.append(f"size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"mean and std need {self.channels} values each")
        if any(s <= 0 for s in self.std):
            problems.append("std values must be positive")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if self.fit not in FITS:
            problems.append(f"fit must be one of {FITS}")
        if problems:
            raise ValueError("invalid preprocessing: " + "; ".join(problems))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std", "background"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


# Formats a worker opens. Anything else (EPS, PDF, PSD, ...) is refused before a plugin parses it:
# EPS would even start Ghostscript. Pillow's TIFF reader covers multi-page scans; MPO is how
# Pillow names JPEGs with more than one picture (phone cameras write them).
ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO", "AVIF")

# Pillow only *warns* between its pixel limit and twice that limit; make it refuse at the limit.
# A module-level filter, not ``catch_warnings``: that one is not thread-safe, and workers decode
# in threads.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def set_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb limit the same as ours (it is process-wide)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


# Signatures of the formats people upload: bytes that start like one of them are "that format,
# but broken"; anything else is "not an image at all" (the API answers 400 and 415).
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*")


def looks_like_an_image(data: bytes) -> bool:
    """Whether the bytes start like a PNG, JPEG, GIF, WebP, BMP or TIFF file."""
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def header_pixels(data: bytes) -> int:
    """Width x height read from the image header, without decoding it; 0 when the bytes are not
    a supported image (``decode_image`` then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=_formats()) as img:
            return int(img.width) * int(img.height)
    except Exception:  # any header Pillow cannot read
        return 0


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes into an upright RGB, RGBA or L image (first frame, EXIF rotation applied)."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=_formats())
    except UnidentifiedImageError as exc:
        # Never quote the bytes: by-reference records can point at files that are not images
        # (/etc/passwd), and this message travels to dead letters and logs.
        raise ImageDecodeError(
            f"not an image of a supported format ({len(data):,} bytes; supported: "
            f"{', '.join(_formats())})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb refused: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for broken headers
        raise ImageDecodeError(f"unreadable image header: {_short(exc)}") from exc
    pixels = img.width * img.height
    if pixels > max_pixels or pixels == 0:
        img.close()
        if pixels == 0:
            raise ImageDecodeError(f"image has no pixels ({img.width}x{img.height})")
        raise ImageDecodeError(
            f"image is {img.width}x{img.height} = {pixels:,} pixels, above the limit of "
            f"{max_pixels:,} (decompression-bomb guard, TWINSTREAM_WORKER_MAX_IMAGE_PIXELS)")
    kind = img.format or "image"
    try:
        img.seek(0)  # animated GIF/WebP/APNG: the first frame represents the image
        img.load()
    except Exception as exc:  # MemoryError included: a hostile file must not end the worker
        raise ImageDecodeError(f"truncated or corrupt {kind} data: {_short(exc)}") from exc
    try:
        # exif_transpose copies the image even when there is nothing to turn: ask first.
        if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
    except Exception:
        pass  # a damaged EXIF block is no reason to lose the picture: keep it as stored
    try:
        return _to_rgb_or_l(img)
    except Exception as exc:
        raise ImageDecodeError(f"cannot convert {kind} mode {img.mode} to RGB: "
                               f"{_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    """An exception as one short line (Pillow messages can embed whole chunks of data)."""
    text = printable(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        # 16-bit and 32-bit integer/float greyscale: scale to 8 bits instead of clipping to white.
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        else:
            top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L")
    if mode == "1":
        return img.convert("L")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return img.convert("RGBA")  # composited later, onto the card's background colour
    if mode in ("L", "RGB"):
        return img
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def image_to_array(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """A decoded image -> normalised float32 ``[C, H, W]``."""
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, spec.background)
        canvas.paste(img, mask=img.getchannel("A"))
        img = canvas
    mode = "L" if spec.channels == 1 else "RGB"
    if img.mode != mode:  # convert copies even when the mode is already right
        img = img.convert(mode)
    resample = INTERPOLATIONS[spec.interpolation]
    if spec.fit == "pad":
        fill = spec.background[0] if spec.channels == 1 else spec.background
        img = ImageOps.pad(img, (spec.width, spec.height), method=resample, color=fill)
    elif img.size != (spec.width, spec.height):
        img = img.resize((spec.width, spec.height), resample=resample)
    pixels = np.asarray(img)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    # ((x / 255, or 1 - x / 255 when inverting) - mean) / std as one multiply-add per value,
    # written straight into the [C, H, W] layout: this runs for every image a worker embeds.
    scale, offset = _affine(spec)
    out = np.empty((pixels.shape[2], pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    np.multiply(pixels.transpose(2, 0, 1), scale, out=out, dtype=np.float32)
    out += offset
    return out


@functools.lru_cache(maxsize=64)
def _affine(spec: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    if spec.invert:  # (1 - x/255 - mean) / std
        scale, offset = -1.0 / (255.0 * std), (1.0 - mean) / std
    else:  # (x/255 - mean) / std
        scale, offset = 1.0 / (255.0 * std), -mean / std
    return (scale.astype(np.float32)[:, None, None], offset.astype(np.float32)[:, None, None])


def preprocess_bytes(data: bytes, spec: Preprocessing,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image bytes -> float32 ``[C, H, W]``; raises ``ImageDecodeError`` with the reason."""
    return image_to_array(decode_image(data, max_pixels), spec)


def preprocess_many(blobs: Sequence[bytes], spec: Preprocessing,
                    max_pixels: int = DEFAULT_MAX_PIXELS
                    ) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Preprocess a batch, keeping going past bad images.

    Returns the stacked good inputs, the positions they came from, and ``{position: reason}`` for
    the ones that failed.
    """
    arrays, kept, failed = [], [], {}
    for i, blob in enumerate(blobs):
        try:
            arrays.append(preprocess_bytes(blob, spec, max_pixels))
            kept.append(i)
        except ImageDecodeError as exc:
            failed[i] = exc.message
    batch = np.stack(arrays) if arrays else np.zeros((0, *spec.shape), dtype=np.float32)
    return batch, kept, failed
