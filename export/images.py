"""The real images export works with: parity samples, int8 calibration, held-out evaluation.

All go through the shared preprocessing (``twinstream.preprocess``), exactly as serving will.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import ImageSource, scan_image_folder
from twinstream.errors import InputError
from twinstream.files import expand_paths
from twinstream.preprocess import Preprocessing


def sample_paths(paths: Sequence[Path], count: int, seed: int = 0) -> list[Path]:
    """A reproducible sample of at most ``count`` paths, in their original order."""
    paths = list(paths)
    if len(paths) <= count:
        return paths
    chosen = set(random.Random(seed).sample(range(len(paths)), count))
    return [p for i, p in enumerate(paths) if i in chosen]


def read_bytes(paths: Sequence[Path]) -> list[bytes]:
    blobs = []
    for path in paths:
        try:
            blobs.append(Path(path).read_bytes())
        except OSError:
            continue  # an unreadable file is no sample; the decodable ones are enough
    return blobs


def training_samples(meta: dict, count: int = 32) -> list[bytes]:
    """Images from the folder the checkpoint was trained on, if it is still there."""
    root = (meta.get("data") or {}).get("root")
    if not root or not Path(root).is_dir():
        return []
    return read_bytes(sample_paths(expand_paths([root]), count))


@dataclass
class Labelled:
    """Preprocessed images with class labels (for few-shot accuracy)."""

    arrays: np.ndarray
    labels: np.ndarray
    classes: int


def load_arrays(paths: Sequence[Path], spec: Preprocessing) -> tuple[np.ndarray, list[int]]:
    """The readable images among ``paths``, preprocessed, and their positions."""
    return ImageSource(paths, spec, cache_mb=0).batch(range(len(paths)))


def calibration_set(source: str | Path, spec: Preprocessing, count: int = 128
                    ) -> tuple[np.ndarray, list[Path]]:
    """Up to ``count`` images from files/folders/globs, preprocessed; the paths used."""
    paths = sample_paths(expand_paths([str(source)]), count)
    arrays, kept = load_arrays(paths, spec)
    if len(arrays) == 0:
        raise InputError(f"no calibration images could be read from {source}")
    return arrays, [paths[i] for i in kept]


def evaluation_set(source: str | Path, spec: Preprocessing, exclude: Sequence[Path] = (),
                   max_images: int = 2000) -> Labelled | None:
    """Labelled images (one sub-folder per class) not used for calibration; None if the folder
    has no class structure (fewer than two classes of two images)."""
    try:
        folder = scan_image_folder(source)
    except InputError:
        return None
    skip = {Path(p).resolve() for p in exclude}
    samples = [s for s in folder.samples if s.path.resolve() not in skip]
    samples = [samples[i] for i in sorted(random.Random(1).sample(range(len(samples)),
                                                                  min(max_images, len(samples))))]
    arrays, kept = load_arrays([s.path for s in samples], spec)
    labels = np.array([samples[i].label for i in kept], dtype=np.int64)
    per_class = np.bincount(labels) if len(labels) else np.array([])
    if int(np.sum(per_class >= 2)) < 2:
        return None
    return Labelled(arrays, labels, int(np.sum(per_class > 0)))
