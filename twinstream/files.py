"""Finding image files from what a user typed: files, folders and glob patterns."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from twinstream.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def expand_paths(args: Iterable[str], recursive: bool = True) -> list[Path]:
    """Files as given, folders expanded to their image files, globs expanded; sorted, no repeats.

    A name that matches nothing is an error (a typo must not publish nothing silently).
    """
    found: dict[Path, None] = {}
    for arg in args:
        matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))] \
            if glob.has_magic(arg) else [Path(arg)]
        if not matches or not matches[0].exists():
            raise InputError(f"no such file or folder: {arg}")
        for path in matches:
            if path.is_dir():
                pattern = "**/*" if recursive else "*"
                for child in sorted(path.glob(pattern)):
                    if child.is_file() and is_image_path(child):
                        found[child] = None
            else:
                found[path] = None  # a file named explicitly is taken whatever its suffix
    return list(found)
