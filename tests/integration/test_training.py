"""Training and evaluation end to end on small real data: shapes and scikit-learn's digits.

No services needed; kept short (tiny encoders, small inputs, few steps) for a 2-core machine.
"""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.augment import AugmentConfig
from training.checkpoint import load_checkpoint
from training.data import scan_image_folder
from training.evaluate import evaluate_embeddings
from training.models import build_encoder
from training.train import Part, TrainConfig, embed_part, train
from twinstream.cli import main
from twinstream.errors import InputError, ModelError
from twinstream.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
QUIET = lambda _m: None  # noqa: E731
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    assert main(["datasets", "digits", "--out", str(root), "--size", "16", "-q"]) == 0
    folder = scan_image_folder(root)
    assert folder.classes == [str(d) for d in range(10)] and len(folder.samples) == 1797
    return root


def quick(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="tiny", embedding_dim=32, image_size=16,
                epochs=3, steps_per_epoch=12, classes_per_batch=6, images_per_class=6,
                val_episodes=50, test_episodes=100, lr=1e-2, warmup=0.2,
                threads=1)  # one thread: on a busy 2-core machine, two spin-wait for each other
    return TrainConfig(**{**base, **kw})


def untrained_report(cfg: TrainConfig, run: Path, ways: int) -> dict:
    """The same architecture with random weights, scored on the run's own test images."""
    from training.data import ImageSource, read_split

    torch.manual_seed(cfg.seed)
    model = build_encoder(cfg.encoder()).eval()
    folder = read_split(run / "split.json", scan_image_folder(cfg.data), "test")
    part = Part(ImageSource(folder.paths, cfg.preprocessing()), folder.labels)
    emb, labels = embed_part(model, part)
    return evaluate_embeddings(emb, labels, ways, 1, cfg.test_episodes).report


def test_digits_unseen_classes_clearly_better_than_untrained(digits, tmp_path):
    cfg = quick(digits, tmp_path / "run", channels=1, split="classes", val_fraction=0.2,
                test_fraction=0.3, loss="circle", ways=3, steps_per_epoch=60)
    result = train(cfg, log=QUIET)
    split = json.loads((tmp_path / "run/split.json").read_text())
    train_classes, test_classes = set(split["train"]["classes"]), set(split["test"]["classes"])
    assert len(test_classes) == 3 and not train_classes & test_classes
    assert set(split["val"]["classes"]).isdisjoint(train_classes | test_classes)
    before = untrained_report(cfg, tmp_path / "run", ways=3)
    after = result.test
    assert after["classes"] == 3
    assert after["retrieval"]["map@r"] > before["retrieval"]["map@r"] + 0.1, (before, after)
    assert after["verification"]["roc_auc"] > before["verification"]["roc_auc"] + 0.05
    for name in ("curves", "roc", "embeddings", "confusion"):
        assert (tmp_path / "run" / f"{name}.png").stat().st_size > 5000
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["test"]["n_way"]["ways"] == 3 and len(report["history"]) == 3


@pytest.mark.parametrize("loss", ["contrastive", "triplet", "circle", "pair-bce"])
def test_shapes_every_loss_learns_better_than_untrained(shapes_data, tmp_path, loss):
    cfg = quick(shapes_data, tmp_path / "run", split="images", val_fraction=0.2,
                test_fraction=0.2, loss=loss, ways=9, image_size=32, steps_per_epoch=40,
                augment=AugmentConfig(p=0.0))
    result = train(cfg, log=QUIET)
    before = untrained_report(cfg, tmp_path / "run", ways=9)
    # 120 steps: enough to separate clearly for verification (the pair-BCE head is the slowest
    # to shape the cosine geometry that retrieval ranks by, so retrieval only has to improve)
    assert result.test["verification"]["roc_auc"] > before["verification"]["roc_auc"] + 0.08
    assert result.test["retrieval"]["map@r"] > before["retrieval"]["map@r"]
    assert result.best["epoch"] in (1, 2, 3) and result.stopped_by == "epochs"
    _, meta = load_checkpoint(tmp_path / "run/best.pt")
    assert meta["loss"] == loss and meta["encoder"].embedding_dim == 32
    thresholds = meta["metrics"]["verification"]
    assert -1 <= thresholds["threshold_far@0.01"] <= 1 and -1 <= thresholds["threshold_eer"] <= 1


def test_resume_continues_where_it_stopped_and_refuses_a_changed_run(shapes_data, tmp_path):
    cfg = quick(shapes_data, tmp_path / "run", split="images", test_fraction=0.0, epochs=2,
                steps_per_epoch=3)
    first = train(cfg, log=QUIET)
    assert [row["epoch"] for row in first.history] == [1, 2]
    logs = []
    resumed = train(replace(cfg, epochs=3, resume=True), log=logs.append)
    assert any("resuming" in line for line in logs)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    with pytest.raises(ModelError, match=r"cannot resume .* arch was 'tiny', now 'small'"):
        train(replace(cfg, arch="small", epochs=4, resume=True), log=QUIET)
    with pytest.raises(InputError, match="nothing to resume"):
        train(replace(cfg, out=str(tmp_path / "empty"), resume=True), log=QUIET)


def test_time_budget_stops_training(shapes_data, tmp_path):
    cfg = quick(shapes_data, tmp_path / "run", split="images", test_fraction=0.0, epochs=10_000,
                steps_per_epoch=5, time_budget_s=3.0)
    result = train(cfg, log=QUIET)
    assert result.stopped_by == "time budget" and 1 <= result.epochs_run < 10_000
    assert result.seconds < 30  # stops soon after the budget, not at the last epoch
    assert (tmp_path / "run/best.pt").is_file()


def test_unreadable_image_and_tiny_class_are_skipped_and_counted(shapes_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    (data / "red_circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (data / "lonely").mkdir()
    shutil.copy(next((data / "red_circle").glob("*_00000.png")), data / "lonely" / "only.png")
    logs = []
    cfg = quick(data, tmp_path / "run", split="images", test_fraction=0.0, epochs=1,
                steps_per_epoch=40, classes_per_batch=9)
    train(cfg, log=logs.append)
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["data"]["excluded_classes"] == 1 and report["data"]["classes"] == 9
    assert report["data"]["skipped_images"] == 1
    assert any("'lonely' excluded: 1 image" in line for line in logs)
    assert any("broken.png" in line and "skipped" in line for line in logs)


def run_cli(capsys, *args):
    code = main([*args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_checkpoint_cli_writes_report_and_plots(trained_run, shapes_data, tmp_path,
                                                         capsys):
    code, out, err = run_cli(capsys, "evaluate", str(trained_run), "--data", str(shapes_data),
                             "--ways", "5", "--episodes", "60", "--out", str(tmp_path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model_kind"] == "checkpoint" and report["part"] == "all"
    assert report["n_way"]["ways"] == 5 and report["n_way"]["episodes"] == 60
    low, high = report["n_way"]["ci95"]
    assert low <= report["n_way"]["accuracy"] <= high
    assert {"roc_auc", "eer", "threshold_eer", "threshold_far@0.01"} <= set(report["verification"])
    assert {"precision@1", "recall@5", "map@r"} <= set(report["retrieval"])
    for name in ("roc", "embeddings", "confusion", "curves"):
        assert Path(report["plots"][name]).stat().st_size > 5000
    assert json.loads((tmp_path / "report.json").read_text())["n_way"] == report["n_way"]


def test_evaluate_onnx_is_torch_free_and_agrees_with_the_checkpoint(onnx_model, trained_run,
                                                                    shapes_data, tmp_path):
    # Refuse torch at import (scipy, used by the t-SNE plot, only looks in sys.modules for it).
    probe = ("import sys, importlib.abc\n"
             "class NoTorch(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path, target=None):\n"
             "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
             "sys.meta_path.insert(0, NoTorch())\n"
             "from twinstream.cli import main\n"
             "code = main(sys.argv[1:])\n"
             "assert 'torch' not in {m.split('.')[0] for m in sys.modules}\n"
             "sys.exit(code)")
    args = ["--data", str(shapes_data), "--ways", "5", "--episodes", "60", "--json"]
    onnx_run = subprocess.run(
        [sys.executable, "-c", probe, "evaluate", str(onnx_model), *args, "--out",
         str(tmp_path / "onnx")], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert onnx_run.returncode == 0, onnx_run.stderr
    via_onnx = json.loads(onnx_run.stdout)
    from training.evaluate import evaluate_model

    via_torch = evaluate_model(trained_run, shapes_data, tmp_path / "pt", ways=5, episodes=60,
                               log=QUIET)
    assert via_onnx["model_kind"] == "onnx"
    assert via_onnx["verification"]["roc_auc"] == pytest.approx(
        via_torch["verification"]["roc_auc"], abs=1e-3)
    assert via_onnx["n_way"]["accuracy"] == pytest.approx(via_torch["n_way"]["accuracy"],
                                                          abs=0.02)


def assert_one_line_error(code, err, expected_code, *needles):
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert lines[-1].startswith("twinstream: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_bad_input_gets_clear_errors(shapes_data, trained_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", str(trained_run), "--data", str(shapes_data),
                           "--ways", "20")
    assert_one_line_error(code, err, 2, "20-way 1-shot evaluation needs 20 classes",
                          "has 9", "--ways 9")
    code, _, err = run_cli(capsys, "train", "--data", str(shapes_data), "--out",
                           str(tmp_path / "r"), "--val-fraction", "0.4", "--test-fraction",
                           "0.5")
    assert_one_line_error(code, err, 2, "class-disjoint split of 9 classes",
                          "leaves 1 train class(es); need at least 2")
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "r"))
    assert_one_line_error(code, err, 2, "data folder not found")
    # a checkpoint whose weights do not fit the architecture it names
    payload = torch.load(trained_run / "best.pt", weights_only=True)
    payload["encoder"]["embedding_dim"] = 7
    torch.save(payload, tmp_path / "lying.pt")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "lying.pt"), "--data",
                           str(shapes_data), "--ways", "5")
    assert_one_line_error(code, err, 3, "does not match its architecture")


def test_ddp_with_two_processes(shapes_data, tmp_path):
    """torchrun starts two processes (gloo); they train as one (tests/integration/test_ddp.py)
    and end with the same weights; rank 0 writes the run."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m",
           "twinstream", "train", "--data", str(shapes_data), "--out", str(out), "--arch",
           "tiny", "--image-size", "16", "--embedding-dim", "16", "--epochs", "2",
           "--steps-per-epoch", "3", "--split", "images", "--test-fraction", "0", "--ways", "5",
           "--json"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(outputs) == 1  # only rank 0 reports
    assert outputs[0]["processes"] == 2 and outputs[0]["epochs_run"] == 2
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and len(report["history"]) == 2
    assert report["ranks_in_sync"] is True  # checked across the ranks at the end of training
    model, _ = load_checkpoint(out / "best.pt")
    assert np.isfinite(sum(p.sum().item() for p in model.parameters()))
