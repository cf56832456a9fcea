"""``twinstream evaluate --open-set`` (the door) and ``--within-parent`` on a briefly trained
encoder; the card's thresholds and calibration as evaluation sees them; refusals."""

import json
from pathlib import Path

import pytest
import torch

from tests.imagegen import write_glyphs
from twinstream.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def glyph_run(tmp_path_factory) -> tuple[Path, Path]:
    """Three scripts of eight glyphs; a tiny encoder trained for a few seconds on all but the
    validation glyphs (the door is then measured on every glyph: 8 per parent)."""
    from training.config import TrainConfig
    from training.train import train

    root = tmp_path_factory.mktemp("glyphs")
    write_glyphs(root, parents=3, classes_per_parent=8, per_class=6, size=20, seed=5)
    run = tmp_path_factory.mktemp("glyph_run")
    train(TrainConfig.automatic(data=str(root), out=str(run), arch="tiny", embedding_dim=16,
                                epochs=4, steps_per_epoch=25, threads=1, ways=5,
                                val_fraction=0.35, val_episodes=20, lr=1e-2),
          log=lambda _m: None)
    return root, run


def evaluate(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["evaluate", *map(str, argv), "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_open_set_reports_dir_at_fpir_and_at_the_card_default(glyph_run, tmp_path, capsys):
    data, run = glyph_run
    code, report, err = evaluate(capsys, run, "--data", data, "--split", "all", "--ways", "5",
                                 "--episodes", "60", "--open-set", "--gallery", "4",
                                 "--within-parent", "--threshold", "0.5", "--out", tmp_path)
    assert code == 0, err
    door = report["open_set"]
    assert door["gallery"] == 4 and door["within_parent"] and door["stranger_probes"] == 240
    points = door["at_fpir"]
    assert [p["target_fpir"] for p in points] == [0.01, 0.05, 0.1]
    for p in points:
        assert p["fpir"] <= p["target_fpir"] + 1e-9
    cuts = [p["threshold"] for p in points]
    assert cuts == sorted(cuts, reverse=True)  # a stricter FPIR needs a higher cut
    assert [p["dir"] for p in points] == sorted(p["dir"] for p in points)
    default = door["card_default"]
    assert default["source"] == "gallery curve" and default["target_fpir"] == 0.05
    assert "4 enrolled identities" in default["reason"] and not default.get("warning")
    assert door["at_threshold"]["threshold"] == 0.5
    assert report["n_way"]["within_parent"] is True
    assert 0 <= report["calibration"]["ece"] <= 1 and report["calibration"]["method"] == "platt"
    for name in ("door", "reliability"):
        assert Path(report["plots"][name]).stat().st_size > 5000


def test_a_card_without_the_curve_falls_back_to_the_pair_threshold(glyph_run, tmp_path,
                                                                   capsys):
    data, run = glyph_run
    payload = torch.load(run / "best.pt", weights_only=True)
    for key in ("recognition", "calibration"):
        del payload["metrics"][key]
    torch.save(payload, tmp_path / "old.pt")
    code, report, err = evaluate(capsys, tmp_path / "old.pt", "--data", data, "--ways", "5",
                                 "--episodes", "20", "--open-set", "--gallery", "4",
                                 "--out", tmp_path / "eval")
    assert code == 0, err
    default = report["open_set"]["card_default"]
    assert default["source"] == "pair threshold"
    assert default["threshold"] == pytest.approx(payload["metrics"]["verification"]
                                                 ["threshold_eer"])
    assert "warning: the model card has no recognition thresholds by gallery size" in err
    assert "no calibration" in err and "calibration" not in report


@pytest.mark.parametrize("flags, message", [
    (["--open-set", "--gallery", "13"], "needs 26 classes"),
    (["--open-set", "--gallery", "5", "--within-parent"], "the largest has 8"),
    (["--ways", "9", "--within-parent"], "the largest has 8"),
    (["--open-set", "--target-fpir", "1.5"], "target FPIR"),
    (["--open-set", "--threshold", "2"], "threshold must be a cosine similarity in [-1, 1]"),
])
def test_impossible_requests_get_one_line_and_nothing_written(glyph_run, tmp_path, capsys,
                                                              flags, message):
    data, run = glyph_run
    code, _, err = evaluate(capsys, run, "--data", data, "--split", "all", "--ways", "5",
                            *flags, "--out", tmp_path / "eval")
    assert code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "eval").exists()
