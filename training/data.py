"""Image-folder data sets: a class is a leaf folder of images (so ``Alphabet/character/`` works)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinstream.errors import ImageDecodeError, InputError
from twinstream.files import is_image_path
from twinstream.preprocess import Preprocessing, preprocess_bytes


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ImageFolder:
    """The classes (leaf folders, named by their path under the root) and their image files."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    excluded: dict[str, int]  # class -> image count, for classes too small to use

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def summary(self) -> dict:
        return {"root": str(self.root), "classes": len(self.classes), "images": len(self.samples),
                "excluded_classes": len(self.excluded)}


def scan_image_folder(root: str | Path, min_per_class: int = 2) -> ImageFolder:
    """Find every leaf folder holding images; classes under ``min_per_class`` are excluded."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    by_class: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_image_path(path):
            name = path.parent.relative_to(root).as_posix()
            if name != ".":
                by_class.setdefault(name, []).append(path)
    excluded = {name: len(paths) for name, paths in by_class.items() if len(paths) < min_per_class}
    classes = sorted(name for name in by_class if name not in excluded)
    if len(classes) < 2:
        raise InputError(
            f"{root} has {len(classes)} usable class folder(s); need at least 2, each with at "
            f"least {min_per_class} images (one sub-folder per class)")
    samples = [Sample(path, label) for label, name in enumerate(classes)
               for path in by_class[name]]
    return ImageFolder(root, classes, samples, excluded)


def load_arrays(paths: Sequence[Path], spec: Preprocessing, progress=None
                ) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Preprocess files into ``[N, C, H, W]``; unreadable ones are skipped and reported by path."""
    arrays, kept, failed = [], [], {}
    items = list(enumerate(paths))
    for i, path in (progress(items) if progress else items):
        try:
            arrays.append(preprocess_bytes(Path(path).read_bytes(), spec))
            kept.append(i)
        except (ImageDecodeError, OSError) as exc:
            failed[str(path)] = str(exc)
    batch = np.stack(arrays) if arrays else np.zeros((0, *spec.shape), dtype=np.float32)
    return batch, kept, failed


def split_per_class(labels: np.ndarray, val_fraction: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class train/validation split of images (every class in both)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) >= 4 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)
