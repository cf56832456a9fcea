"""Duplicate detection: copied classes, images shared by classes, repeats inside a class."""

from pathlib import Path

import pytest

from training.data import scan_image_folder
from training.duplicates import find_duplicates
from twinstream.errors import InputError


def write(root: Path, name: str, blobs: list[bytes]) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for k, blob in enumerate(blobs):
        (folder / f"{k}.png").write_bytes(blob)  # content need not decode: only hashed


def image(tag: str) -> bytes:
    return b"\x89PNG fake " + tag.encode()


@pytest.fixture
def folder(tmp_path):
    """set1/greek = set2/greek (a copied class); a and b share one image; c repeats one."""
    greek = [image(f"greek{k}") for k in range(4)]
    write(tmp_path, "set1/greek", greek)
    write(tmp_path, "set2/greek", greek)
    write(tmp_path, "set1/a", [image("a0"), image("a1"), image("shared")])
    write(tmp_path, "set1/b", [image("b0"), image("b1"), image("shared")])
    write(tmp_path, "set1/c", [image("c0"), image("c1"), image("c1")])
    return scan_image_folder(tmp_path)


def counts(folder) -> dict[str, int]:
    return {name: int((folder.labels == k).sum()) for k, name in enumerate(folder.classes)}


def test_merge_folds_the_copy_and_keeps_a_shared_image_once(folder):
    merged, report = find_duplicates(folder, "merge")
    assert report.copied_classes == {"set2/greek": "set1/greek"}
    assert report.shared_images == 1 and report.repeated_in_class == 1
    assert counts(merged) == {"set1/a": 3, "set1/b": 2, "set1/c": 2, "set1/greek": 4}
    assert report.images_removed == 4 + 1 + 1
    summary = report.summary()
    assert summary["copied_classes"] == 1 and summary["copies"] == {"set2/greek": "set1/greek"}
    assert "1 class(es) copy another" in report.describe() and "merged" in report.describe()


def test_drop_removes_every_copy_of_a_shared_image(folder):
    dropped, report = find_duplicates(folder, "drop")
    assert counts(dropped) == {"set1/a": 2, "set1/b": 2, "set1/c": 2, "set1/greek": 4}
    assert report.images_removed == 4 + 2 + 1


def test_error_stops_with_the_counts(folder):
    with pytest.raises(InputError, match=r"1 class\(es\) copy another, 1 image\(s\) appear"):
        find_duplicates(folder, "error")


def test_a_clean_folder_is_returned_unchanged(tmp_path):
    write(tmp_path, "x", [image("x0"), image("x1")])
    write(tmp_path, "y", [image("y0"), image("y1")])
    clean = scan_image_folder(tmp_path)
    same, report = find_duplicates(clean, "error")
    assert same is clean and not report.found and report.images_removed == 0


def test_a_class_contained_in_a_bigger_one_is_a_copy(tmp_path):
    write(tmp_path, "big", [image(f"k{k}") for k in range(5)])
    write(tmp_path, "part", [image("k1"), image("k3")])
    write(tmp_path, "other", [image("o0"), image("o1")])
    merged, report = find_duplicates(scan_image_folder(tmp_path), "merge")
    assert report.copied_classes == {"part": "big"} and merged.classes == ["big", "other"]
    (tmp_path / "other" / "0.png").unlink()
    (tmp_path / "other" / "1.png").unlink()
    with pytest.raises(InputError, match=r"1 class\(es\) with 2 or more images are left"):
        find_duplicates(scan_image_folder(tmp_path, min_per_class=1), "merge")


def test_unknown_policy_is_refused(folder):
    with pytest.raises(InputError, match="--duplicates must be one of merge, drop, error"):
        find_duplicates(folder, "keep")
