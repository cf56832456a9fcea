"""Image folders, splits, decoding on demand, augmentation, schedules."""

import json

import pytest
import torch

from tests.imagegen import encode, gradient
from training.augment import (
    AugmentConfig,
    quarter_turn_classes,
    random_affine,
    variant_classes,
)
from training.data import ImageSource, read_split, scan_image_folder, split_data
from training.optim import lr_factor
from twinstream.errors import InputError
from twinstream.preprocess import Preprocessing


def make_folder(root, classes, per_class, nested=False, size=12):
    png = encode(gradient(size))
    for c in range(classes):
        folder = root / (f"alphabet{c % 2}/char{c}" if nested else f"class{c}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class if isinstance(per_class, int) else per_class[c]):
            (folder / f"{i}.png").write_bytes(png)
    return root


def test_leaf_folders_are_classes_and_tiny_classes_are_excluded_and_counted(tmp_path):
    make_folder(tmp_path, 5, [3, 1, 4, 0, 2], nested=True)
    folder = scan_image_folder(tmp_path)
    assert folder.classes == ["alphabet0/char0", "alphabet0/char2", "alphabet0/char4"]
    assert folder.excluded == {"alphabet1/char1": 1}
    assert folder.summary()["excluded_classes"] == 1 and len(folder.samples) == 9


def test_too_few_classes_is_a_clear_input_error(tmp_path):
    make_folder(tmp_path, 2, [5, 1])
    with pytest.raises(InputError, match="1 usable class folder"):
        scan_image_folder(tmp_path)
    with pytest.raises(InputError, match="not found"):
        scan_image_folder(tmp_path / "nope")


def test_class_split_is_disjoint_seeded_and_readable_back(tmp_path):
    folder = scan_image_folder(make_folder(tmp_path / "d", 20, 3))
    split = split_data(folder, "classes", 0.2, 0.25, seed=3)
    names = {p: {folder.classes[folder.samples[i].label] for i in idx}
             for p, idx in split.parts.items()}
    assert [len(names[p]) for p in ("train", "val", "test")] == [11, 4, 5]
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"])
    assert not (names["val"] & names["test"])
    assert split_data(folder, "classes", 0.2, 0.25, seed=3).parts == split.parts
    assert split_data(folder, "classes", 0.2, 0.25, seed=4).parts != split.parts
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split.describe(folder, 3)))
    test = read_split(path, folder, "test")
    assert set(test.classes) == names["test"] and len(test.samples) == 15


def test_image_split_keeps_every_class_everywhere(tmp_path):
    folder = scan_image_folder(make_folder(tmp_path / "d", 3, 10))
    split = split_data(folder, "images", 0.2, 0.2, seed=0)
    for part in ("train", "val", "test"):
        assert len({folder.samples[i].label for i in split.parts[part]}) == 3
    assert sorted(i for idx in split.parts.values() for i in idx) == list(range(30))
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split.describe(folder, 0)))
    assert len(read_split(path, folder, "val").samples) == len(split.parts["val"])


def test_a_split_that_leaves_a_part_empty_is_refused(tmp_path):
    folder = scan_image_folder(make_folder(tmp_path, 3, 4))
    with pytest.raises(InputError, match="leaves 1 train class"):
        split_data(folder, "classes", 0.2, 0.2)
    with pytest.raises(InputError, match="validation class"):
        split_data(scan_image_folder(make_folder(tmp_path / "b", 2, 2)), "images", 0.2, 0)
    with pytest.raises(InputError, match="sum below 1"):
        split_data(folder, "classes", 0.6, 0.5)


def test_image_source_decodes_on_demand_skips_unreadable_and_bounds_its_cache(tmp_path):
    good = tmp_path / "a.png"
    good.write_bytes(encode(gradient(20, 20)))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    spec = Preprocessing(8, 8, 1, (0.5,), (0.5,))
    source = ImageSource([good, bad, good], spec, cache_mb=8 * 8 * 4 / 2**20)  # one image
    arrays, kept = source.batch([0, 1, 2])
    assert arrays.shape == (2, 1, 8, 8) and kept == [0, 2]
    assert list(source.failed) == [str(bad)] and len(source.cache) == 1
    assert source.get(1) is None  # remembered, not retried


def test_augmentation_distorts_each_image_differently_and_p0_is_identity():
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, 4:12, 6:10] = 1.0
    g = torch.Generator().manual_seed(0)
    out = random_affine(x, AugmentConfig(rotate_deg=20, p=1.0), g)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert not torch.allclose(out[0], out[1])  # one transform per image
    assert torch.equal(random_affine(x, AugmentConfig(p=0.0), g), x)
    assert torch.allclose(random_affine(x, AugmentConfig(0, 0, 0, 0, p=1.0), g), x, atol=1e-5)


def test_parent_split_keeps_each_parent_in_one_part(tmp_path):
    for parent, count in (("a", 3), ("b", 6), ("c", 4), ("d", 9)):
        for c in range(count):
            make_folder(tmp_path / parent, 1, 2)  # class0 under each parent: re-made below
            (tmp_path / parent / "class0").rename(tmp_path / parent / f"char{c}")
    folder = scan_image_folder(tmp_path)
    split = split_data(folder, "parents", 0.2, 0.15, seed=0)
    parents = {p: {folder.classes[folder.samples[i].label].split("/")[0] for i in idx}
               for p, idx in split.parts.items()}
    # 22 classes: validation wants 4 (parent c is exactly 4), test wants 3 (parent a)
    assert parents == {"val": {"c"}, "test": {"a"}, "train": {"b", "d"}}
    with pytest.raises(InputError, match="--split parents needs at least 3 parent folders"):
        split_data(scan_image_folder(make_folder(tmp_path / "flat", 6, 2)), "parents", 0.2, 0.2)


def test_quarter_turns_are_new_classes():
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    out, labels = quarter_turn_classes(x, torch.tensor([3, 3]), torch.tensor([0, 1]))
    assert labels.tolist() == [12, 13]
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], torch.rot90(x[1], 1, dims=(1, 2)))


def test_mirror_and_turn_variants_are_new_classes():
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    out, labels = variant_classes(x, torch.tensor([3, 3]), torch.tensor([1, 5]), 4, True)
    assert labels.tolist() == [25, 29]  # 8 variants per class
    assert torch.equal(out[0], torch.rot90(x[0], 1, dims=(1, 2)))
    assert torch.equal(out[1], torch.flip(torch.rot90(x[1], 1, dims=(1, 2)), dims=(2,)))
    out, labels = variant_classes(x, torch.tensor([3, 3]), torch.tensor([0, 1]), 1, True)
    assert labels.tolist() == [6, 7] and torch.equal(out[1], torch.flip(x[1], dims=(2,)))
    assert torch.equal(out[0], x[0])


def test_schedules_warm_up_then_decay():
    assert lr_factor(0.0, "cosine", 0.1) < 0.05
    assert lr_factor(0.1, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, "cosine", 0.1) == pytest.approx(0.0, abs=1e-9)
    assert [lr_factor(p, "step", 0) for p in (0.2, 0.6, 0.9)] == [1.0, 0.1, 0.01]
    assert lr_factor(0.9, "constant", 0.1) == 1.0
    with pytest.raises(ValueError):
        lr_factor(0.5, "linear")

