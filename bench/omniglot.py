"""Omniglot few-shot benchmark: 20-way one-shot accuracy on alphabets never seen in training.

Trains one encoder per loss on ``images_background_small1`` only (5 alphabets, 136 characters),
then measures 20-way one-shot accuracy (400 episodes) on every character of the three alphabets
that appear only in ``images_background_small2``: Japanese (katakana), Sanskrit and Tagalog (106
characters, 2,120 images). Greek and Latin, which are in both zips, are left out of the test set.
Two reference rows use no training: raw pixels and an untrained encoder.

    nice -n 5 .venv/bin/python bench/omniglot.py   # the full table (about 65 minutes)
    .venv/bin/python bench/omniglot.py --budget 2 --compare-budget 1 --losses circle  # a look

Every loss trains for ``--compare-budget`` minutes (the side-by-side comparison); the first loss
(the best one in our runs) then trains again for the full ``--budget``, the headline number.

The zips are extracted to ``--cache`` (outside the repository); nothing is downloaded.
Prints a Markdown table and writes bench/results/omniglot.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.augment import AugmentConfig  # noqa: E402
from training.data import ImageSource, scan_image_folder  # noqa: E402
from training.evaluate import evaluate_embeddings, evaluate_model  # noqa: E402
from training.train import Part, TrainConfig, embed_part, train  # noqa: E402

TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
LOSSES = ("circle", "triplet", "contrastive", "pair-bce")
WAYS, EPISODES = 20, 400


def extract(zips: Path, cache: Path) -> tuple[Path, Path]:
    """``cache/images_background_small1`` and a test folder of the three new alphabets."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("images_background_small1", "images_background_small2"):
        if not (cache / name).is_dir():
            with zipfile.ZipFile(zips / f"{name}.zip") as archive:
                archive.extractall(cache)
    test = cache / "test_new_alphabets"
    if not test.is_dir():
        staged = cache / ".test_new_alphabets"
        shutil.rmtree(staged, ignore_errors=True)
        for alphabet in TEST_ALPHABETS:
            shutil.copytree(cache / "images_background_small2" / alphabet, staged / alphabet)
        staged.rename(test)
    return cache / "images_background_small1", test


def base_config(train_dir: Path, out: Path, budget_min: float) -> TrainConfig:
    """Small greyscale inputs (28 px) and the Conv-4 backbone: what a 2-core CPU can afford."""
    return TrainConfig(
        data=str(train_dir), out=str(out), arch="conv4", embedding_dim=64, image_size=28,
        channels=1, invert=True, split="classes", val_fraction=0.15, test_fraction=0.0,
        classes_per_batch=32, images_per_class=4, quarter_turns=True, epochs=1000,
        steps_per_epoch=100,
        augment=AugmentConfig(rotate_deg=10, shear_deg=10, scale=0.1, translate=0.05),
        lr=3e-3, ways=WAYS, val_episodes=200, time_budget_s=budget_min * 60,
        threads=1)  # on a shared 2-core machine, two OpenMP threads mostly wait for each other


def reference_rows(train_dir: Path, test_dir: Path, cfg: TrainConfig) -> list[dict]:
    """Raw pixels and an untrained encoder, measured exactly like the trained ones."""
    import torch

    from training.models import build_encoder

    folder = scan_image_folder(test_dir)
    source = ImageSource(folder.paths, cfg.preprocessing())
    pixels, kept = source.batch(range(len(source)))
    labels = folder.labels[kept]
    flat = pixels.reshape(len(pixels), -1)
    flat = flat - flat.mean(axis=0)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    torch.manual_seed(0)
    untrained = build_encoder(cfg.encoder()).eval()
    emb, labels_u = embed_part(untrained, Part(source, folder.labels))
    rows = []
    for name, vectors, y in (("raw pixels (no training)", flat, labels),
                             ("untrained conv4 (random weights)", emb, labels_u)):
        ev = evaluate_embeddings(vectors, y, WAYS, 1, EPISODES).report
        rows.append(row_of(name, ev, None))
    return rows


def row_of(name: str, report: dict, run: dict | None) -> dict:
    n_way = report["n_way"]
    return {"loss": name, "accuracy": n_way["accuracy"], "ci95": n_way["ci95"],
            "roc_auc": report["verification"]["roc_auc"], "eer": report["verification"]["eer"],
            "precision@1": report["retrieval"]["precision@1"],
            "map@r": report["retrieval"]["map@r"], **(run or {})}


def markdown(rows: list[dict]) -> str:
    lines = ["| loss | 20-way one-shot (95% CI) | ROC AUC | EER | P@1 | MAP@R | train budget "
             "| train time | epochs | train images/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        low, high = r["ci95"]
        timing = (f"{r['budget_min']:g} min | {r['seconds'] / 60:.1f} min | {r['epochs']} | "
                  f"{r['images_per_s']:.0f}") if "seconds" in r else "- | - | - | -"
        lines.append(f"| {r['loss']} | **{r['accuracy']:.1%}** ({low:.1%}-{high:.1%}) | "
                     f"{r['roc_auc']:.3f} | {r['eer']:.3f} | {r['precision@1']:.3f} | "
                     f"{r['map@r']:.3f} | {timing} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zips", type=Path, default=ROOT.parent / "shared/datasets/omniglot")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/twinstream/omniglot")
    parser.add_argument("--runs", type=Path, default=Path.home() / ".cache/twinstream/bench-runs")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="training minutes of the headline run of the first loss")
    parser.add_argument("--compare-budget", type=float, default=10.0,
                        help="training minutes of every loss in the comparison (0: skip it)")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--result", type=Path, default=ROOT / "bench/results/omniglot.json")
    args = parser.parse_args()
    if not args.zips.is_dir():
        args.zips = Path("/work/shared/datasets/omniglot")
    train_dir, test_dir = extract(args.zips, args.cache)
    cfg0 = base_config(train_dir, args.runs, args.budget)
    rows = reference_rows(train_dir, test_dir, cfg0)
    started = time.monotonic()
    plan = [(loss, args.compare_budget) for loss in args.losses if args.compare_budget > 0]
    plan.append((args.losses[0], args.budget))
    for loss, budget in plan:
        run = args.runs / f"{loss}-{budget:g}min"
        shutil.rmtree(run, ignore_errors=True)
        cfg = replace(cfg0, out=str(run), loss=loss, time_budget_s=budget * 60)
        print(f"[{loss}] training for up to {budget:g} min ...", file=sys.stderr, flush=True)
        result = train(cfg, log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        report = evaluate_model(run / "best.pt", test_dir, run / "eval", ways=WAYS, shots=1,
                                episodes=EPISODES, log=lambda m: None)
        rows.append(row_of(loss, report, {
            "budget_min": budget, "seconds": result.seconds, "epochs": result.epochs_run,
            "best_epoch": result.best.get("epoch"), "images_per_s": result.images_per_s,
            "val_one_shot": result.best.get("val_one_shot")}))
        print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    table = markdown(rows)
    print(table)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({
        "benchmark": "omniglot 20-way one-shot, unseen alphabets", "ways": WAYS,
        "episodes": EPISODES, "train": "images_background_small1 (136 characters)",
        "test": f"{', '.join(TEST_ALPHABETS)} from images_background_small2 (106 characters)",
        "config": {k: v for k, v in cfg0.to_dict().items() if k not in ("data", "out")},
        "machine": f"{platform.machine()}, shared 2-core CPU, other sessions running",
        "total_minutes": round((time.monotonic() - started) / 60, 1),
        "rows": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()
