"""Finding image files from what a user typed: files, folders and glob patterns."""

from __future__ import annotations

import glob
import os
import stat
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


class NotARegularFile(InputError):
    """A path that names a FIFO, socket, device or folder: reading it could block or never end.
    ``what`` says which, as the end of a sentence ("is a folder, not an image file")."""

    def __init__(self, path: Path | str, what: str):
        super().__init__(f"{display_path(path)} {what}")
        self.what = what


def read_regular_file(path: Path | str, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """Up to ``max_bytes + 1`` bytes of a regular file; refuses anything else without blocking.

    Opened with O_NONBLOCK, so a FIFO does not wait for a writer, then checked with fstat on the
    open file (no window between the check and the read). ``follow_symlinks`` False refuses a
    final symlink (a path whose links were already resolved and checked). Raises ``OSError``
    for files that cannot be opened or read, ``NotARegularFile`` for the rest.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise NotARegularFile(path, "is a folder, not an image file")
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, "is not a regular file (a FIFO, socket or device): "
                                        "refused")
        os.set_blocking(fd, True)
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def display_path(path: Path | str) -> str:
    """A path as text that is always valid Unicode: bytes of a file name that are not UTF-8
    appear as ``\\xff`` escapes instead of lone surrogates that nothing downstream can store."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
