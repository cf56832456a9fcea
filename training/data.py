"""Image-folder data sets, class-disjoint splits, and decoding on demand.

A class is a leaf folder of images, named by its path under the root (so ``Alphabet/character/``
works). Images are decoded with the one shared preprocessing (``twinstream.preprocess``) when they
are first needed; decoded arrays are kept in memory only while they fit ``cache_mb``. Nothing here
imports torch, so evaluating an ONNX model stays torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twinstream.errors import ImageDecodeError, InputError
from twinstream.files import is_image_path
from twinstream.preprocess import Preprocessing, preprocess_bytes

SPLIT_MODES = ("classes", "parents", "images")
PARTS = ("train", "val", "test")


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
    excluded: dict[str, int] = field(default_factory=dict)  # class -> images, too small to use

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    def summary(self) -> dict:
        return {"root": str(self.root), "classes": len(self.classes), "images": len(self.samples),
                "excluded_classes": len(self.excluded)}

    def subset(self, indices: Sequence[int]) -> ImageFolder:
        """The given samples, their classes renumbered 0..n-1 in name order."""
        names = sorted({self.classes[self.samples[i].label] for i in indices})
        number = {name: k for k, name in enumerate(names)}
        samples = [Sample(self.samples[i].path, number[self.classes[self.samples[i].label]])
                   for i in indices]
        return ImageFolder(self.root, names, samples, dict(self.excluded))

    def with_classes(self, names: Sequence[str]) -> ImageFolder:
        """Only the named classes (those the folder has); unknown names are ignored."""
        wanted = set(names)
        return self.subset([i for i, s in enumerate(self.samples)
                            if self.classes[s.label] in wanted])


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


@dataclass
class Split:
    """Sample indices of each part. ``classes`` mode: the parts share no class (evaluation then
    measures classes never seen in training); ``parents`` mode: nor any parent folder (an
    alphabet is validated on only if none of its characters trained); ``images`` mode: every
    class is in every part."""

    mode: str
    parts: dict[str, list[int]]

    def describe(self, folder: ImageFolder, seed: int) -> dict:
        """What ``split.json`` holds: enough to rebuild the parts from the same folder."""
        info: dict = {"mode": self.mode, "seed": seed, "root": str(folder.root.resolve())}
        for part, idx in self.parts.items():
            entry: dict = {"images": len(idx),
                           "classes": sorted({folder.classes[folder.samples[i].label]
                                              for i in idx})}
            if self.mode == "images":
                entry["files"] = [folder.samples[i].path.relative_to(folder.root).as_posix()
                                  for i in idx]
            info[part] = entry
        return info


def _count(n: int, fraction: float) -> int:
    return max(1, round(n * fraction)) if fraction > 0 else 0


def parent_of(class_name: str) -> str:
    """The parent folder of a class ("Alphabet/character01" -> "Alphabet"; "" at the top)."""
    return class_name.rsplit("/", 1)[0] if "/" in class_name else ""


def _parent_order(classes: list[str], order: np.ndarray, n_val: int, n_test: int
                  ) -> tuple[np.ndarray, int, int]:
    """Class order and part sizes that keep each parent in one part: validation (then test)
    takes whole parents, each time the one whose size is closest to what is still wanted."""
    by_parent: dict[str, list[int]] = {}
    for c in order:
        by_parent.setdefault(parent_of(classes[c]), []).append(int(c))
    if len(by_parent) < 2 + (n_test > 0):
        raise InputError(f"--split parents needs at least {2 + (n_test > 0)} parent folders "
                         f"(e.g. alphabets holding character folders); the data has "
                         f"{len(by_parent)}")
    left = list(by_parent)  # already in a seeded order: ties go to the first
    parts: list[list[int]] = []
    for wanted in (n_val, n_test):
        part: list[int] = []
        while wanted > 0 and len(part) < 0.75 * wanted and len(left) > 1:
            best = min(left, key=lambda p: abs(len(by_parent[p]) - (wanted - len(part))))
            part += by_parent[best]
            left.remove(best)
        parts.append(part)
    train = [c for p in left for c in by_parent[p]]
    return np.array(parts[0] + parts[1] + train), len(parts[0]), len(parts[1])


def split_data(folder: ImageFolder, mode: str = "classes", val_fraction: float = 0.2,
               test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Seeded split into train / val / test; raises ``InputError`` when a needed part is empty."""
    if mode not in SPLIT_MODES:
        raise InputError(f"split mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InputError("--val-fraction and --test-fraction must be in [0, 1) and sum below 1")
    rng = np.random.default_rng(seed)
    labels = folder.labels
    parts: dict[str, list[int]] = {p: [] for p in PARTS}
    if mode in ("classes", "parents"):
        order = rng.permutation(len(folder.classes))
        n_val = _count(len(order), val_fraction)
        n_test = _count(len(order), test_fraction)
        if mode == "parents":
            order, n_val, n_test = _parent_order(folder.classes, order, n_val, n_test)
        chosen = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
                  "train": order[n_val + n_test:]}
        for part, classes in chosen.items():
            parts[part] = np.flatnonzero(np.isin(labels, classes)).tolist()
        need = {"train": 2, "val": 2 if val_fraction > 0 else 0}
        for part, minimum in need.items():
            if len(chosen[part]) < minimum:
                raise InputError(
                    f"a class-disjoint split of {len(order)} classes (--val-fraction "
                    f"{val_fraction:g}, --test-fraction {test_fraction:g}) leaves "
                    f"{len(chosen[part])} {part} class(es); need at least {minimum}: use more "
                    "classes, smaller fractions, or --split images")
    else:
        # A class gives validation (and test) images only when it can spare two of them (a
        # one-shot episode needs a reference and a query) and keep two for training.
        for label in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == label))
            n_val = max(2, _count(len(idx), val_fraction)) \
                if val_fraction > 0 and len(idx) >= 4 else 0
            n_test = max(2, _count(len(idx), test_fraction)) \
                if test_fraction > 0 and len(idx) - n_val >= 4 else 0
            parts["val"] += idx[:n_val].tolist()
            parts["test"] += idx[n_val:n_val + n_test].tolist()
            parts["train"] += idx[n_val + n_test:].tolist()
        n_val_classes = len(np.unique(labels[parts["val"]])) if parts["val"] else 0
        if val_fraction > 0 and n_val_classes < 2:
            raise InputError(
                f"the image split leaves {n_val_classes} validation class(es); need at least 2 "
                "classes with 4 or more images each")
    return Split(mode, {p: sorted(idx) for p, idx in parts.items()})


def read_split(path: str | Path, folder: ImageFolder, part: str) -> ImageFolder:
    """The samples of one part of a ``split.json`` written by training, from ``folder``."""
    try:
        info = json.loads(Path(path).read_text())
        entry = info[part]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read part {part!r} of split file {path}: {exc}") from exc
    if info.get("mode") == "images":
        wanted = set(entry["files"])
        chosen = folder.subset([i for i, s in enumerate(folder.samples)
                                if s.path.relative_to(folder.root).as_posix() in wanted])
    else:
        chosen = folder.with_classes(entry["classes"])
    if len(chosen.samples) == 0:
        raise InputError(f"the {part} part of {path} has no images in {folder.root}")
    return chosen


class ImageSource:
    """Preprocessed images by index, decoded on first use.

    Arrays stay cached while the cache holds less than ``cache_mb``; beyond that, images are
    decoded again each time they are needed (memory stays bounded, whatever the data set size).
    An unreadable file is remembered in ``failed`` (path -> reason) and never retried.
    """

    def __init__(self, paths: Sequence[Path], spec: Preprocessing, cache_mb: float = 1024):
        self.paths, self.spec = list(paths), spec
        self.cache: dict[int, np.ndarray] = {}
        self.cache_limit = int(cache_mb * 2**20) // max(1, 4 * int(np.prod(spec.shape)))
        self.failed: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray | None:
        if i in self.cache:
            return self.cache[i]
        path = self.paths[i]
        if str(path) in self.failed:
            return None
        try:
            arr = preprocess_bytes(Path(path).read_bytes(), self.spec)
        except (ImageDecodeError, OSError) as exc:
            self.failed[str(path)] = str(exc)
            return None
        if len(self.cache) < self.cache_limit:
            self.cache[i] = arr
        return arr

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, list[int]]:
        """``[n, C, H, W]`` of the readable ones and their positions in ``indices``."""
        arrays, kept = [], []
        for pos, i in enumerate(indices):
            arr = self.get(int(i))
            if arr is not None:
                arrays.append(arr)
                kept.append(pos)
        if not arrays:
            return np.zeros((0, *self.spec.shape), dtype=np.float32), kept
        return np.stack(arrays), kept
