"""``twinstream demo --quick`` end to end: shapes, training, export, the local stack, two worker
processes, queries. Exit code 0 (top-5 precision at least 0.9), the results picture, and no
process left behind."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.integration.leftovers import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_quick_demo_exits_0_draws_the_picture_and_leaves_no_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSTREAM_")}
    env["TMPDIR"] = str(tmp_path)  # the demo starts its own broker and Redis
    result = run([sys.executable, "-m", "twinstream", "demo", "--quick", "--json",
                  "--out", str(tmp_path / "demo")], timeout_s=480, env=env, cwd=ROOT)
    assert result["left"] == [], f"processes outlived the demo: {result['left']}"
    assert result["returncode"] == 0, result["stderr"][-3000:]
    report = json.loads(result["stdout"].strip().splitlines()[-1])
    assert report["gallery"] == 9 * 10 and report["queries"] == 9 * 2
    assert report["agreement_top5"] >= 0.9
    picture = Path(report["picture"])
    with Image.open(picture) as image:
        assert image.format == "PNG"
        # One row per class (query + top 5, 96-px tiles), as _draw_results lays them out.
        assert image.size == (6 * 104 + 8, 9 * (96 + 34 + 8) + 8)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # thumbnails drawn, not a blank sheet
    green = sum(n for n, (r, g, b) in colours if (r, g, b) == (0, 100, 0))  # "darkgreen" text
    assert green > 0  # labels of hits of the query's class
