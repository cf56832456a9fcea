"""A pretrained standard backbone end to end through the CLI: ``train --arch resnet18 --weights``
(in its own process) with a frozen first epoch, ``export --int8`` (parity checked), then
``evaluate`` of the exported model; the card carries the preprocessing the weights expect.

No published weights are reachable offline: the file is written here from a randomly initialised
ResNet-18 in torchvision's key layout (``fc.`` included, as in the published ``.pth``), with
batch-norm statistics that are not the trivial 0 and 1, so a buffer that failed to load, or an
export that dropped one, would show.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from training.backbones import REGISTRY
from training.config import IMAGENET_MEAN, IMAGENET_STD
from training.shapes import generate_shapes
from training.weights import sha256
from twinstream.cli import main

ROOT = Path(__file__).resolve().parents[2]


def published_resnet18(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state = REGISTRY["resnet18"].build(3).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    torch.save(state, path)
    return state


def cli(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "twinstream", *map(str, args), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def in_process(capsys, *args) -> dict:
    """The same CLI without a new interpreter (torch is loaded already: ~3 s saved a command),
    on one torch thread: two spin-wait for each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main([*map(str, args), "--json"])
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


def test_resnet18_from_a_weights_file_trains_frozen_then_exports_with_parity_and_evaluates(
        tmp_path, capsys):
    weights, run, model = tmp_path / "resnet18-w.pth", tmp_path / "run", tmp_path / "m.onnx"
    state = published_resnet18(weights)
    data = tmp_path / "shapes"  # 9 classes x 8 images of 32 px: a few seconds for every step
    generate_shapes(data, per_class=8, size=32, seed=11)

    trained = cli("train", "--data", data, "--out", run, "--arch", "resnet18",
                  "--weights", weights, "--image-size", "32", "--embedding-dim", "16",
                  "--epochs", "2", "--steps-per-epoch", "2", "--freeze-epochs", "1",
                  "--classes-per-batch", "9", "--images-per-class", "4", "--split", "images",
                  "--test-fraction", "0", "--ways", "5", "--val-episodes", "20",
                  "--threads", "1")
    log = trained.stderr
    assert f"backbone: resnet18 from {weights.name}" in log
    assert (log.index("backbone frozen") < log.index("epoch 1/2") < log.index("backbone unfrozen")
            < log.index("epoch 2/2"))
    # the unfrozen second epoch moved the backbone away from the file
    last = torch.load(run / "last.pt", weights_only=True)["objective"]
    assert not torch.equal(last["encoder.features.layer1.0.conv1.weight"],
                           state["layer1.0.conv1.weight"])

    # the torchscript exporter: 10 s faster than the default dynamo one on this machine, and
    # ResNet-18's operators are those of the "resnet" architecture that test_export_cli.py
    # exports with dynamo
    exported = in_process(capsys, "export", run, "--out", model, "--exporter", "torchscript",
                          "--samples", "16", "--int8", "--calibration", data,
                          "--calibration-images", "16")
    card = exported["card"]
    assert card["preprocessing"]["mean"] == list(IMAGENET_MEAN)
    assert card["preprocessing"]["std"] == list(IMAGENET_STD)
    assert (card["preprocessing"]["height"], card["preprocessing"]["width"],
            card["preprocessing"]["channels"]) == (32, 32, 3)
    assert card["architecture"]["arch"] == "resnet18"
    assert card["architecture"]["init"] == f"{weights.name} sha256:{sha256(weights)[:16]}"
    parity = exported["parity"]
    assert parity["ok"] and parity["max_abs_diff"] <= parity["limits"]["max_abs_diff"]
    int8 = exported["int8"]
    assert int8["card"]["precision"] == "int8"
    assert int8["card"]["preprocessing"] == card["preprocessing"]
    assert int8["report"]["cosine_vs_fp32"]["mean"] >= 0.98

    report = in_process(capsys, "evaluate", model, "--data", data, "--ways", "5",
                        "--episodes", "30", "--out", tmp_path / "eval")
    assert report["model_kind"] == "onnx" and report["version"] == card["version"]
    assert report["n_way"]["episodes"] == 30 and 0 <= report["verification"]["roc_auc"] <= 1


def test_bad_weights_end_in_one_line_before_any_run_folder(tmp_path, capsys):
    data = tmp_path / "shapes"
    generate_shapes(data, per_class=4, size=32, seed=1)
    torch.manual_seed(0)
    torch.save(REGISTRY["mobilenet_v3_small"].build(3).state_dict(), tmp_path / "mnv3.pth")
    (tmp_path / "text.pth").write_text("not weights")
    cases = [(["--arch", "resnet18", "--weights", tmp_path / "mnv3.pth"], 3,
              "are mobilenet_v3_small weights, not resnet18: pass --arch mobilenet_v3_small"),
             (["--arch", "resnet18", "--weights", tmp_path / "text.pth"], 3,
              "not a PyTorch weights file"),
             (["--arch", "small", "--weights", tmp_path / "mnv3.pth"], 2,
              "--weights needs a standard --arch"),
             (["--weights", tmp_path / "mnv3.pth"], 2, "--weights needs --arch")]
    for args, exit_code, needle in cases:
        out = tmp_path / "run"
        code = main(["train", "--data", str(data), "--out", str(out), *map(str, args)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == exit_code, lines
        assert len(lines) == 1 and lines[0].startswith("twinstream: error: "), lines
        assert needle in lines[0]
        assert not out.exists()  # refused before anything was written
