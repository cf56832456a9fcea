"""Errors keep their cause (issue 12): `--debug` shows the Redis, Kafka or onnxruntime error
behind a one-line message, so no code re-raises ``from None``."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("twinstream", "worker", "index", "api", "training", "export")


def test_no_error_hides_its_cause():
    hiding = [f"{path.relative_to(ROOT)}:{n}" for package in PACKAGES
              for path in sorted((ROOT / package).rglob("*.py"))
              for n, line in enumerate(path.read_text().splitlines(), 1)
              if line.rstrip().endswith("from None")]
    assert not hiding, hiding


def test_debug_shows_the_chained_cause(tmp_path, capsys):
    from twinstream.cli import main

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    assert main(["model-card", str(bad), "--debug"]) == 3
    err = capsys.readouterr().err
    assert "The above exception was the direct cause" in err  # onnxruntime's own error
    assert err.strip().splitlines()[-1].startswith("twinstream: error: ")
