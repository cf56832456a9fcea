"""The commands: ``export`` (fp32 + int8) of a briefly trained ``small`` model, ``model-card``,
``embed`` with bad images, and foreign encoders through ``--allow-no-card``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.imagegen import hostile
from twinstream.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_run(shapes_data, tmp_path_factory) -> Path:
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("small_run")
    train(TrainConfig(data=str(shapes_data), out=str(run), arch="small", epochs=1, seed=0),
          log=lambda _m: None)
    return run


@pytest.fixture(scope="module")
def exported(small_run, shapes_data, tmp_path_factory):
    """``twinstream export --int8`` through the CLI, as JSON."""
    out = tmp_path_factory.mktemp("cli") / "model.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "twinstream", "export", str(small_run), "--out", str(out),
         "--int8", "--calibration", str(shapes_data), "--calibration-images", "48", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "torchvision" not in result.stderr
    return out, json.loads(result.stdout)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_writes_fp32_and_int8_with_their_reports(exported):
    out, result = exported
    int8_path = out.with_suffix(".int8.onnx")
    assert out.is_file() and int8_path.is_file()
    assert result["parity"]["ok"] and result["parity"]["inputs"] == "images"
    assert result["card"]["architecture"]["arch"] == "small"
    assert result["card"]["preprocessing"]["height"] == 64
    int8 = result["int8"]
    assert int8["out"] == str(int8_path) and int8["card"]["precision"] == "int8"
    assert int8["card"]["version"] != result["card"]["version"]
    report = int8["report"]
    assert report["cosine_vs_fp32"]["mean"] >= 0.99 and report["speed"]["speedup"] > 0
    # held out = the shapes images not used for calibration, with their classes
    assert report["images"] == 270 - 48 and report["one_shot"]["classes"] == 9


def test_model_card_prints_text_and_json(exported, capsys):
    out, result = exported
    code, text, _ = run(capsys, "model-card", out.with_suffix(".int8.onnx"))
    assert code == 0
    for needle in ("version", "(int8)", "64-d, metric cosine", "3x64x64 RGB", "threshold",
                   "arch=small", "quantization", "training data"):
        assert needle in text, needle
    code, text, _ = run(capsys, "model-card", out, "--json")
    card = json.loads(text)
    runtime = card.pop("runtime")  # where this process would run it: not part of the card
    assert code == 0 and card == result["card"]
    assert runtime["provider"] == "CPUExecutionProvider" and runtime["warnings"] == []


def test_embed_writes_vectors_and_names_the_images_it_could_not_read(exported, shapes_data,
                                                                     tmp_path, capsys):
    out, _ = exported
    good = sorted(shapes_data.rglob("*.png"))[:5]
    bad = tmp_path / "broken.png"
    bad.write_bytes(hostile()["truncated_png"])
    vectors = tmp_path / "v" / "vectors.npy"
    code, text, err = run(capsys, "embed", *good, bad, "--model", out, "--out", vectors,
                          "--batch", "2")
    assert code == 0 and "wrote" in text
    assert f"{bad}: truncated or corrupt" in err
    matrix = np.load(vectors)
    assert matrix.shape == (5, 64) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)

    code, text, _ = run(capsys, "embed", *good[:2], bad, "--model", out, "--json")
    result = json.loads(text)
    assert result["rows"] == [str(p) for p in good[:2]]
    assert result["failed"][0]["path"] == str(bad)
    np.testing.assert_allclose(np.array(result["vectors"]), matrix[:2], atol=1e-6)

    code, _, err = run(capsys, "embed", bad, "--model", out)
    assert code == 2 and "none of the 1 image(s) could be embedded" in err


def test_a_foreign_encoder_needs_flags_and_then_embeds_the_same(exported, shapes_data,
                                                                tmp_path, capsys):
    out, _ = exported
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    image = sorted(shapes_data.rglob("*.png"))[0]
    code, _, err = run(capsys, "embed", image, "--model", bare)
    assert code == 3 and "no twinstream model card" in err and "--allow-no-card" in err
    code, _, err = run(capsys, "embed", image, "--model", bare, "--size", "64")
    assert code == 2 and "needs --allow-no-card" in err
    code, _, err = run(capsys, "embed", image, "--model", bare, "--allow-no-card",
                       "--size", "32", "--mean", "0.5", "--std", "0.5")
    assert code == 3 and "height = 64" in err
    code, text, _ = run(capsys, "embed", image, "--model", bare, "--allow-no-card",
                        "--size", "64", "--mean", "0.5", "--std", "0.5", "--json")
    foreign = json.loads(text)
    code, text, _ = run(capsys, "embed", image, "--model", out, "--json")
    carded = json.loads(text)
    np.testing.assert_allclose(foreign["vectors"], carded["vectors"], atol=1e-6)
    assert foreign["model"]["version"] != carded["model"]["version"]


def test_embed_without_a_model_says_how_to_give_one(shapes_data, capsys, monkeypatch):
    monkeypatch.delenv("TWINSTREAM_MODEL_PATH", raising=False)
    code, _, err = run(capsys, "embed", sorted(shapes_data.rglob("*.png"))[0])
    assert code == 2 and "--model" in err and "TWINSTREAM_MODEL_PATH" in err
