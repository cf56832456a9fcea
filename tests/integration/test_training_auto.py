"""``twinstream train`` with data-aware defaults, duplicates, a time budget and tiny data sets.

Generated Omniglot-like glyphs (dark strokes on white, greyscale) and tiny encoders keep every
run to a few seconds.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.imagegen import write_glyphs
from tests.integration.test_training import untrained_report
from training.config import AugmentConfig, TrainConfig
from twinstream.cli import main

pytestmark = pytest.mark.slow
FAST = ["--arch", "tiny", "--embedding-dim", "16", "--threads", "1", "--val-episodes", "20",
        "--test-episodes", "20", "--ways", "3"]


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glyphs")
    write_glyphs(root, parents=2, classes_per_parent=5, per_class=6, size=20)
    return root


def train_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["train", *map(str, argv), "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out) if code == 0 else None
    return code, result, captured.err


def checkpoint(run: Path) -> dict:
    return torch.load(run / "best.pt", weights_only=True)


def test_defaults_are_chosen_from_the_data_printed_and_recorded(glyphs, tmp_path, capsys):
    code, _, err = train_cli(capsys, "--data", glyphs, "--out", tmp_path / "run",
                                  "--epochs", "1", "--steps-per-epoch", "3", *FAST)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("auto: ")]
    chosen = {line.split()[1]: line for line in lines}
    assert "channels" in chosen and chosen["channels"].startswith("auto: channels 1: 100% of")
    assert chosen["invert"].startswith("auto: invert True: dark strokes on a light background")
    assert chosen["image-size"].startswith("auto: image-size 20: images are 20 px")
    assert "quarter-turns" in chosen and "arch" not in chosen and "epochs" not in chosen
    saved = checkpoint(tmp_path / "run")
    assert saved["preprocessing"]["channels"] == 1 and saved["preprocessing"]["invert"] is True
    assert saved["auto_choices"]["invert"]["value"] is True
    assert saved["train_config"]["image_size"] == 20 and saved["train_config"]["arch"] == "tiny"
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["auto_choices"]["channels"]["reason"].startswith("100% of")
    assert report["data_profile"]["greyscale"] == 1.0


def test_nested_classes_validate_on_a_whole_parent_never_trained_on(tmp_path, capsys):
    write_glyphs(tmp_path / "scripts", parents=4, classes_per_parent=6, per_class=5, size=16)
    code, _, err = train_cli(capsys, "--data", tmp_path / "scripts", "--out", tmp_path / "run",
                             "--epochs", "1", "--steps-per-epoch", "2", *FAST)
    assert code == 0, err
    assert "auto: split parents: classes sit in 4 parent folders" in err
    split = json.loads((tmp_path / "run/split.json").read_text())
    val_parents = {name.split("/")[0] for name in split["val"]["classes"]}
    train_parents = {name.split("/")[0] for name in split["train"]["classes"]}
    assert len(val_parents) == 1 and not val_parents & train_parents
    curve = checkpoint(tmp_path / "run")["metrics"]["recognition"]
    assert curve["classes"] == 6  # the held-out parent's classes


def test_a_flag_given_beats_the_automatic_choice(glyphs, tmp_path, capsys):
    code, _, err = train_cli(capsys, "--data", glyphs, "--out", tmp_path / "run", "--epochs",
                             "1", "--steps-per-epoch", "2", "--channels", "3", "--no-invert",
                             "--image-size", "16", *FAST)
    assert code == 0, err
    assert "auto: channels" not in err and "auto: invert" not in err
    saved = checkpoint(tmp_path / "run")
    assert saved["preprocessing"]["channels"] == 3 and saved["preprocessing"]["invert"] is False
    assert "channels" not in saved["auto_choices"]


def test_time_budget_without_epochs_trains_until_the_budget_ends(glyphs, tmp_path, capsys):
    code, result, err = train_cli(capsys, "--data", glyphs, "--out", tmp_path / "run",
                                  "--time-budget", "0.1", "--steps-per-epoch", "5", *FAST)
    assert code == 0, err
    assert "auto: epochs 1000000: until the time budget ends" in err
    assert result["stopped_by"] == "time budget" and result["epochs_run"] >= 1
    assert 6 <= result["seconds"] < 40  # trained until the budget ended, and not much beyond


def test_a_budget_spent_before_the_first_step_still_leaves_a_checkpoint(glyphs, tmp_path,
                                                                        capsys):
    code, result, err = train_cli(capsys, "--data", glyphs, "--out", tmp_path / "run",
                                  "--time-budget", "0.00001", *FAST)
    assert code == 0, err
    assert result["stopped_by"] == "time budget" and result["epochs_run"] == 1
    assert checkpoint(tmp_path / "run")["history"][0]["epoch"] == 1


def test_nine_classes_of_six_images_train_with_an_image_split(tmp_path, capsys):
    write_glyphs(tmp_path / "nine", parents=3, classes_per_parent=3, per_class=6, size=16)
    code, result, err = train_cli(capsys, "--data", tmp_path / "nine", "--out",
                                  tmp_path / "run", "--split", "images", "--epochs", "1",
                                  "--steps-per-epoch", "3", *FAST)
    assert code == 0, err
    split = json.loads((tmp_path / "run/split.json").read_text())
    assert split["val"]["images"] == 18 and split["test"]["images"] == 18  # 2 per class each
    assert result["test"]["n_way"]["ways"] == 3


def test_copied_classes_are_merged_and_reported(glyphs, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(glyphs, data)
    shutil.copytree(data / "script0/glyph00", data / "script1/copy_of_glyph00")
    code, _, err = train_cli(capsys, "--data", data, "--out", tmp_path / "run", "--epochs", "1",
                             "--steps-per-epoch", "2", *FAST)
    assert code == 0, err
    assert "warning: duplicates: 1 class(es) copy another" in err
    report = json.loads((tmp_path / "run/report.json").read_text())
    duplicates = report["data"]["duplicates"]
    assert duplicates["policy"] == "merge" and duplicates["copied_classes"] == 1
    assert duplicates["copies"] == {"script1/copy_of_glyph00": "script0/glyph00"}
    assert report["data"]["classes"] == 10 and duplicates["images_removed"] == 6


def test_duplicates_error_stops_before_writing_anything(glyphs, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(glyphs, data)
    shutil.copy(data / "script0/glyph00/00.png", data / "script1/glyph03/extra.png")
    code, _, err = train_cli(capsys, "--data", data, "--out", tmp_path / "run",
                             "--duplicates", "error", *FAST)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("twinstream: error: duplicates: 0 class(es) "
                                                  "copy another, 1 image(s) appear")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--val-fraction", "0"], "--val-fraction must be above 0"),
    (["--warmup", "1.5"], "--warmup must be in [0, 1)"),
    (["--classes-per-batch", "1"], "--classes-per-batch must be at least 2"),
])
def test_bad_values_get_one_line_and_nothing_written(glyphs, tmp_path, capsys, flags, message):
    code, _, err = train_cli(capsys, "--data", glyphs, "--out", tmp_path / "run", *flags, *FAST)
    assert code == 2 and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_the_mlp_twin_learns_the_digits(tmp_path, capsys):
    """The classic dense Siamese network on MNIST-like digits: every digit in training, new
    images of them at test time (``--split images``), scored against the same net untrained."""
    assert main(["datasets", "digits", "--out", str(tmp_path / "digits"), "--size", "16",
                 "-q"]) == 0
    capsys.readouterr()
    code, result, err = train_cli(capsys, "--data", tmp_path / "digits", "--out",
                                  tmp_path / "run", "--arch", "mlp", "--base-channels", "64",
                                  "--split", "images", "--epochs", "2", "--steps-per-epoch",
                                  "40", "--test-fraction", "0.3", "--threads", "1", "--ways",
                                  "10", "--test-episodes", "100", "--lr", "0.01")
    assert code == 0, err
    saved = checkpoint(tmp_path / "run")
    assert saved["encoder"]["arch"] == "mlp"
    cfg = saved["train_config"]
    before = untrained_report(TrainConfig(**{**cfg, "augment": AugmentConfig(**cfg["augment"])}),
                              tmp_path / "run", ways=10)
    after = result["test"]
    assert after["n_way"]["accuracy"] > before["n_way"]["accuracy"] + 0.2
    assert after["retrieval"]["map@r"] > before["retrieval"]["map@r"] + 0.2
