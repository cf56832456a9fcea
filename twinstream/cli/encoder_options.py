"""Open the encoder a command needs, from settings and (optionally) foreign-encoder flags.

Every command that embeds calls ``load_encoder(settings, args)``; one that should also accept
foreign encoders (``.onnx`` files without a twinstream model card) adds the flags with
``add_encoder_options(parser)``. The flags then describe the preprocessing the card would have.
"""

from __future__ import annotations

import argparse
from typing import Any

from twinstream.errors import InputError
from twinstream.preprocess import INTERPOLATIONS, Preprocessing
from twinstream.runtime import Encoder
from twinstream.settings import Settings

FOREIGN_FLAGS = ("size", "channels", "mean", "std", "interpolation", "invert")


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "foreign encoders (an .onnx file without a twinstream model card)")
    group.add_argument("--allow-no-card", action="store_true",
                       help="use a model without a card; --size, --mean and --std then say how "
                            "images are preprocessed")
    group.add_argument("--size", metavar="HxW", help="input size, e.g. 224 or 64x48 (HxW)")
    group.add_argument("--channels", type=int, choices=(1, 3),
                       help="1 = grayscale, 3 = RGB (default 3)")
    group.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean after scaling to "
                       "[0, 1], e.g. 0.485,0.456,0.406 (one value is used for every channel)")
    group.add_argument("--std", metavar="S[,S,S]", help="per-channel standard deviation")
    group.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), default=None,
                       help="resize filter (default bilinear)")
    group.add_argument("--invert", action="store_true", default=None,
                       help="x -> 1 - x after scaling (dark ink on light paper)")


def load_encoder(settings: Settings, args: Any = None, path: str | None = None) -> Encoder:
    """The encoder at ``path`` (default: ``settings.model.path``); a foreign one as the
    command's flags describe it."""
    return Encoder.from_settings(settings, path, fallback=foreign_preprocessing(args))


def foreign_preprocessing(args: Any) -> Preprocessing | None:
    """The preprocessing described by the foreign-encoder flags, or None without --allow-no-card."""
    given = [name for name in FOREIGN_FLAGS if getattr(args, name, None) not in (None, False)]
    if not getattr(args, "allow_no_card", False):
        if given:
            raise InputError(f"--{given[0]} describes a model without a card and needs "
                             "--allow-no-card (a model with a card uses its own preprocessing)")
        return None
    missing = [f"--{name}" for name in ("size", "mean", "std") if getattr(args, name) is None]
    if missing:
        raise InputError(f"--allow-no-card needs {', '.join(missing)}: the preprocessing cannot "
                         "be guessed")
    height, width = parse_size(args.size)
    mean, std = parse_floats(args.mean, "--mean"), parse_floats(args.std, "--std")
    channels = args.channels or 3
    mean, std = _per_channel(mean, channels, "--mean"), _per_channel(std, channels, "--std")
    try:
        return Preprocessing(height=height, width=width, channels=channels, mean=mean, std=std,
                             interpolation=args.interpolation or "bilinear",
                             invert=bool(args.invert))
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise InputError(f"--size {text!r}: give one side (64) or height x width (64x48)")
    return (values[0], values[-1])


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError as exc:
        raise InputError(f"{flag} {text!r}: give numbers separated by commas") from exc


def _per_channel(values: tuple[float, ...], channels: int, flag: str) -> tuple[float, ...]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise InputError(f"{flag} has {len(values)} values for {channels} channel(s)")
    return values
