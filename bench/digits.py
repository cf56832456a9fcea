"""The dense twin (``--arch mlp``) against the convolutional ones on scikit-learn's digits.

The classic MNIST-style Siamese network is two dense stacks on flattened pixels; this trains it
and the conv encoders with the same budget, loss and batches on the bundled digits (1,797
images, 16 px; nothing downloaded), in two protocols:

- ``images``: every digit in training, held-out images of them at test (the classic one);
- ``classes``: three digits never seen in training (what a twin encoder is for).

    .venv/bin/python bench/digits.py            # about 8 minutes
    .venv/bin/python bench/digits.py --budget 0.2 --archs mlp tiny

Prints a Markdown table; writes bench/results/digits.json (with the machine load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import TrainConfig  # noqa: E402
from training.digits import write_digits  # noqa: E402
from training.train import train  # noqa: E402


def run(data: Path, out: Path, arch: str, split: str, budget_min: float) -> dict:
    cfg = TrainConfig(data=str(data), out=str(out), arch=arch, channels=1, image_size=16,
                      embedding_dim=32, split=split, val_fraction=0.2,
                      test_fraction=0.3, loss="circle", lr=1e-2, warmup=0.1, epochs=1_000_000,
                      steps_per_epoch=50, classes_per_batch=10 if split == "images" else 5,
                      images_per_class=8, ways=10 if split == "images" else 3,
                      time_budget_s=budget_min * 60, threads=1, test_episodes=400)
    load = os.getloadavg()[0]
    result = train(cfg, log=lambda _m: None)
    test = result.test
    return {"arch": arch, "split": split, "ways": test["n_way"]["ways"],
            "accuracy": test["n_way"]["accuracy"], "map@r": test["retrieval"]["map@r"],
            "roc_auc": test["verification"]["roc_auc"], "images_per_s": result.images_per_s,
            "seconds": result.seconds, "load": [round(load, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=1.0, help="training minutes per run")
    parser.add_argument("--archs", nargs="+", default=["mlp", "tiny", "conv4"])
    parser.add_argument("--result", type=Path, default=ROOT / "bench/results/digits.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        write_digits(data, size=16)
        for split in ("images", "classes"):
            for arch in args.archs:
                rows.append(run(data, Path(tmp) / f"{arch}-{split}", arch, split, args.budget))
                print(rows[-1], file=sys.stderr, flush=True)
    lines = ["| protocol | arch | N-way one-shot | MAP@R | ROC AUC | train images/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        what = ("held-out images, 10-way" if r["split"] == "images"
                else "3 unseen digits, 3-way")
        lines.append(f"| {what} | `{r['arch']}` | {r['accuracy']:.1%} | {r['map@r']:.3f} | "
                     f"{r['roc_auc']:.3f} | {r['images_per_s']:.0f} |")
    table = "\n".join(lines)
    print(table)
    args.result.write_text(json.dumps({"budget_min": args.budget, "rows": rows, "table": table},
                                      indent=2))


if __name__ == "__main__":
    main()
