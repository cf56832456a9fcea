"""Byte-identical images across classes, and classes that copy another, found by hashing.

A character filed twice under two names (the two Omniglot background sets share Greek and Latin
byte for byte) would be trained as two different classes, pushed apart from itself, and would
leak across a class-disjoint split. Every image is hashed (BLAKE2b of its bytes) and:

- a class whose images all appear in one other class is a **copy** of it;
- an image found in several classes that are not copies is a **shared image** (its label is
  ambiguous);
- an image repeated inside one class is kept once (a pair of identical images says nothing).

Policies: ``merge`` (default) folds each copy class into the class it copies (one class, each
image once) and keeps a shared image only in the first class (by name) that has it; ``drop``
also folds copies (they hold nothing of their own) but removes every shared image from all its
classes, so nothing with an ambiguous label is trained on; ``error`` stops with the counts.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from training.data import ImageFolder, Sample
from twinstream.errors import InputError

POLICIES = ("merge", "drop", "error")


@dataclass
class DuplicateReport:
    policy: str
    copied_classes: dict[str, str] = field(default_factory=dict)  # copy -> the class it copies
    shared_images: int = 0  # distinct images found in two or more (non-copy) classes
    repeated_in_class: int = 0  # extra copies of an image inside its own class, dropped
    images_removed: int = 0

    @property
    def found(self) -> bool:
        return bool(self.copied_classes or self.shared_images)

    def summary(self) -> dict:
        return {"policy": self.policy, "copied_classes": len(self.copied_classes),
                "copies": dict(sorted(self.copied_classes.items())),
                "shared_images": self.shared_images,
                "repeated_in_class": self.repeated_in_class,
                "images_removed": self.images_removed}

    def describe(self) -> str:
        found = (f"duplicates: {len(self.copied_classes)} class(es) copy another, "
                 f"{self.shared_images} image(s) appear in several classes, "
                 f"{self.repeated_in_class} repeated inside a class")
        if self.policy == "error":
            return found
        done = {"merge": "copies merged into the class they copy, a shared image kept in its "
                         "first class", "drop": "copies and every shared image dropped"}
        return f"{found}: {done[self.policy]}; {self.images_removed} image file(s) left out"


def file_hash(path: Path) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def find_duplicates(folder: ImageFolder, policy: str = "merge") -> tuple[ImageFolder,
                                                                          DuplicateReport]:
    """The folder with duplicates handled by ``policy``, and what was found and done."""
    if policy not in POLICIES:
        raise InputError(f"--duplicates must be one of {', '.join(POLICIES)}, got {policy!r}")
    hashes: list[str | None] = []
    for sample in folder.samples:
        try:
            hashes.append(file_hash(sample.path))
        except OSError:
            hashes.append(None)  # unreadable: training skips and counts it later
    report = DuplicateReport(policy)
    # class name -> its distinct hashes, first sample index of each
    members: dict[str, dict[str, int]] = defaultdict(dict)
    keep = [True] * len(folder.samples)
    for i, (sample, digest) in enumerate(zip(folder.samples, hashes, strict=True)):
        if digest is None:
            continue
        name = folder.classes[sample.label]
        if digest in members[name]:
            keep[i] = False
            report.repeated_in_class += 1
        else:
            members[name][digest] = i
    owners: dict[str, list[str]] = defaultdict(list)
    for name in folder.classes:
        for digest in members[name]:
            owners[digest].append(name)
    report.copied_classes = _copies(folder.classes, members, owners)
    shared = {d for d, names in owners.items()
              if len([n for n in names if n not in report.copied_classes]) > 1}
    report.shared_images = len(shared)
    if policy == "error" and report.found:
        raise InputError(f"{report.describe()} (--duplicates merge or drop handles them)")
    for name in report.copied_classes:
        for i in members[name].values():
            keep[i] = False  # every image of a copy already lives in the class it copies
    for digest in shared:
        names = [n for n in owners[digest] if n not in report.copied_classes]
        losers = names[1:] if policy == "merge" else names
        for name in losers:
            keep[members[name][digest]] = False
    report.images_removed = keep.count(False)
    if not report.images_removed:
        return folder, report
    labels = {name: k for k, name in enumerate(folder.classes)}
    samples = [Sample(s.path, s.label) for s, kept in zip(folder.samples, keep, strict=True)
               if kept]
    counts: dict[int, int] = defaultdict(int)
    for s in samples:
        counts[s.label] += 1
    present = [name for name in folder.classes if counts[labels[name]] >= 2]
    number = {labels[name]: k for k, name in enumerate(present)}
    excluded = dict(folder.excluded)
    excluded.update({name: counts[labels[name]] for name in folder.classes
                     if name not in present and name not in report.copied_classes
                     and counts[labels[name]] > 0})
    result = ImageFolder(folder.root, present,
                         [Sample(s.path, number[s.label]) for s in samples if s.label in number],
                         excluded)
    if len(present) < 2:
        raise InputError(f"after removing duplicates, {len(present)} class(es) with 2 or more "
                         "images are left; need at least 2")
    return result, report


def _copies(classes: list[str], members: dict[str, dict[str, int]],
            owners: dict[str, list[str]]) -> dict[str, str]:
    """copy -> original: classes all of whose images are in one other class. Of two equal
    classes the later name is the copy; chains resolve to the first original."""
    copies: dict[str, str] = {}
    for name in classes:
        digests = set(members[name])
        if not digests:
            continue
        candidates = set.intersection(*(set(owners[d]) - {name} for d in digests))
        candidates -= set(copies)
        for other in sorted(candidates):
            other_digests = set(members[other])
            if digests < other_digests or (digests == other_digests and other < name):
                copies[name] = other
                break
    return copies
