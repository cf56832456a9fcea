"""Serving code never imports torch, not even indirectly (DESIGN.md, "No torch at serving time")."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVING_PACKAGES = ("twinstream", "worker", "index", "api")

PROBE = r"""
import importlib, pkgutil, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
packages = sys.argv[1:]
imported = []
for name in packages:
    package = importlib.import_module(name)
    imported.append(name)
    for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
        if info.name.endswith("__main__"):
            continue  # running it would start the CLI
        importlib.import_module(info.name)
        imported.append(info.name)
from twinstream.cli import build_parser
build_parser()  # every command registers without torch
assert "torch" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
print(len(imported))
"""


def test_serving_packages_import_without_torch():
    result = subprocess.run([sys.executable, "-c", PROBE, *SERVING_PACKAGES], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 10  # the walk really found the modules


def test_the_probe_would_catch_a_torch_import(tmp_path):
    (tmp_path / "leaky").mkdir()
    (tmp_path / "leaky" / "__init__.py").write_text("")
    (tmp_path / "leaky" / "mod.py").write_text("import torch\n")
    result = subprocess.run([sys.executable, "-c", PROBE, "leaky"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert result.returncode != 0 and "torch" in result.stderr
