"""Omniglot proxy: what `twinstream train` gives a user in 15 minutes on 2 cores.

Trains on ``images_background_small1`` only (5 alphabets, 136 characters) and measures on the
three alphabets that only ``images_background_small2`` has (Japanese katakana, Sanskrit,
Tagalog: 106 characters never seen in training, nor their alphabets):

- 20-way one-shot accuracy with episodes across the three alphabets, and within one alphabet
  (Lake et al.'s protocol; only alphabets with 20 or more characters: katakana and Sanskrit);
- the door: 10 characters enrolled with one image each, probes of those 10 and of 10 stranger
  characters of the same alphabet; DIR at FPIR 5%, and what the model card's default cut for a
  gallery of 10 does (employees recognised, strangers rejected);
- the calibration's expected error on test pairs.

Rows, each a real command line run as a user would (subprocesses: train, export, then
``evaluate`` on the exported .onnx):

- (a) the README's recommended command for handwriting (``RECOMMENDED`` below);
- (b) ``twinstream train --data DIR --time-budget 15`` alone (data-aware defaults);
- (c) the recommended command on small1 + small2 together (Greek and Latin are in both, byte
  for byte: duplicate detection merges them); its model card is kept in bench/results as what a
  user would ship. Its test alphabets are in its training data, so it has no test row.

    nice -n 5 .venv/bin/python bench/omniglot.py              # all rows, about 50 minutes
    .venv/bin/python bench/omniglot.py --budget 0.5 --rows b   # a quick look
    # what chose the defaults: variants of the recommended command at a fixed 1,500 steps
    # (steps, not minutes, so a busy machine changes the time, not the comparison)
    .venv/bin/python bench/omniglot.py --rows --compare "--image-size 32" "--mirror"

The zips are extracted to ``--cache`` (outside the repository); nothing is downloaded. Writes
bench/results/omniglot.json (rows, machine load at the start and end of each run) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.data import ImageSource, scan_image_folder  # noqa: E402
from training.evaluate import evaluate_embeddings, evaluate_model  # noqa: E402
from twinstream.preprocess import Preprocessing  # noqa: E402

TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
SETS = ("images_background_small1", "images_background_small2")
WAYS, EPISODES, GALLERY, TARGET_FPIR = 20, 400, 10, 0.05
# The README's recommended command for handwriting on a 2-core CPU (row a).
RECOMMENDED = ("--arch conv4 --channels 1 --invert --image-size 32 --loss circle "
               "--quarter-turns --mirror --split parents --val-fraction 0.15 --test-fraction 0 "
               "--classes-per-batch 32 --images-per-class 4 --steps-per-epoch 100 --threads 1")


def extract(zips: Path, cache: Path) -> dict[str, Path]:
    """small1, the three new alphabets (test), and small1 + small2 side by side (both)."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in SETS:
        if not (cache / name).is_dir():
            with zipfile.ZipFile(zips / f"{name}.zip") as archive:
                archive.extractall(cache)
    test, both = cache / "test_new_alphabets", cache / "small1+small2"
    if not test.is_dir():
        staged = cache / ".test_new_alphabets"
        shutil.rmtree(staged, ignore_errors=True)
        for alphabet in TEST_ALPHABETS:
            shutil.copytree(cache / SETS[1] / alphabet, staged / alphabet)
        staged.rename(test)
    if not both.is_dir():
        staged = cache / ".small1+small2"
        shutil.rmtree(staged, ignore_errors=True)
        for name in SETS:
            shutil.copytree(cache / name, staged / name)
        staged.rename(both)
    return {"small1": cache / SETS[0], "test": test, "both": both}


def twinstream(*args: str, log: Path) -> dict:
    """Run ``twinstream ARGS --json``; its stderr (progress, auto choices) goes to ``log``."""
    cmd = [sys.executable, "-m", "twinstream", *args, "--json"]
    with open(log, "a") as err:
        err.write(f"$ {shlex.join(cmd)}\n")
        err.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        raise SystemExit(f"twinstream {args[0]} failed (exit {done.returncode}); see {log}")
    return json.loads(done.stdout)


def train_and_export(name: str, flags: str, data: Path, budget: float, runs: Path) -> dict:
    run = runs / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    log = run / "commands.log"
    argv = ["train", "--data", str(data), "--out", str(run), *shlex.split(flags),
            "--time-budget", f"{budget:g}"]
    print(f"[{name}] twinstream {shlex.join(argv)}", file=sys.stderr, flush=True)
    load_start, started = os.getloadavg(), time.monotonic()
    result = twinstream(*argv, log=log)
    load_end = os.getloadavg()
    exported = twinstream("export", str(run), "--out", str(run / "model.onnx"), log=log)
    report = json.loads((run / "report.json").read_text())
    auto = report.get("auto_choices", {})
    data = dict(report.get("data", {}))
    data["duplicates"] = {k: v for k, v in data.get("duplicates", {}).items() if k != "copies"}
    return {"row": name, "command": "twinstream " + shlex.join(argv),
            "auto_choices": {k: v["value"] for k, v in auto.items()},
            "train_seconds": result["seconds"], "wall_seconds": round(time.monotonic() - started),
            "epochs": result["epochs_run"], "best_epoch": result["best"].get("epoch"),
            "val_one_shot": result["best"].get("val_one_shot"),
            "images_per_s": result["images_per_s"], "data": data,
            "load_start": [round(x, 2) for x in load_start],
            "load_end": [round(x, 2) for x in load_end],
            "model": str(run / "model.onnx"), "card": exported["card"]}


def measure(row: dict, test: Path) -> dict:
    """20-way one-shot across and within alphabets, the door, calibration: on the .onnx."""
    out = Path(row["model"]).parent
    quiet = dict(log=lambda _m: None, split="all", ways=WAYS, shots=1, episodes=EPISODES)
    across = evaluate_model(row["model"], test, out / "eval-across", **quiet)
    within = evaluate_model(row["model"], test, out / "eval-within", **quiet, within_parent=True,
                            open_set=True, gallery=GALLERY, target_fpir=TARGET_FPIR)
    door = within["open_set"]
    at5 = next(p for p in door["at_fpir"] if p["target_fpir"] == TARGET_FPIR)
    default = door["card_default"]
    return {"across": across["n_way"], "within": within["n_way"],
            "door_dir_at_fpir5": at5["dir"], "door_threshold_at_fpir5": at5["threshold"],
            "door_default": {k: default[k] for k in ("threshold", "reason", "source", "dir",
                                                      "fpir", "employees_recognised",
                                                      "strangers_rejected")},
            "ece_test": across.get("calibration", {}).get("ece"),
            "roc_auc": across["verification"]["roc_auc"]}


def raw_pixels(test: Path) -> dict:
    """The floor: nearest neighbour on raw (inverted, 28 px) pixels."""
    folder = scan_image_folder(test)
    spec = Preprocessing(height=28, width=28, channels=1, mean=(0.5,), std=(0.5,), invert=True)
    pixels, kept = ImageSource(folder.paths, spec).batch(range(len(folder.paths)))
    flat = pixels.reshape(len(pixels), -1)
    flat = flat - flat.mean(axis=0)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    report = evaluate_embeddings(flat, folder.labels[kept], WAYS, 1, EPISODES).report
    return {"row": "raw pixels (no training)", "across": report["n_way"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| row | command | 20-way 1-shot across alphabets | within alphabet | door DIR at "
             "FPIR 5% | door at the card default: recognised / strangers rejected | ECE | "
             "train time | load (start → end) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "within" not in r:
            lines.append(f"| {r['row']} | - | {r['across']['accuracy']:.1%} | - | - | - | - | - "
                         "| - |")
            continue
        d = r["door_default"]
        lines.append(
            f"| {r['row']} | `{r['command']}` | **{r['across']['accuracy']:.1%}** | "
            f"{r['within']['accuracy']:.1%} | {r['door_dir_at_fpir5']:.1%} | "
            f"{d['employees_recognised']:.1%} / {d['strangers_rejected']:.1%} (cut "
            f"{d['threshold']:.3f}) | {r['ece_test']:.3f} | {r['train_seconds'] / 60:.1f} min | "
            f"{r['load_start'][0]:.1f} → {r['load_end'][0]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zips", type=Path, default=ROOT.parent / "shared/datasets/omniglot")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/twinstream/omniglot")
    parser.add_argument("--runs", type=Path, default=Path.home() / ".cache/twinstream/bench-runs")
    parser.add_argument("--budget", type=float, default=15.0, help="training minutes per row")
    parser.add_argument("--rows", nargs="*", default=["a", "b", "c"], choices=("a", "b", "c"))
    parser.add_argument("--compare", nargs="*", default=[], metavar="FLAGS",
                        help="variants: extra flags for the recommended command, each trained "
                             "for --compare-steps steps (the first run is the plain command)")
    parser.add_argument("--compare-steps", type=int, default=1500)
    parser.add_argument("--result", type=Path, default=ROOT / "bench/results/omniglot.json")
    args = parser.parse_args()
    if args.compare and not args.rows and args.result.name == "omniglot.json":
        args.result = args.result.with_name("omniglot-compare.json")  # keep the headline file
    if not args.zips.is_dir():
        args.zips = Path("/work/shared/datasets/omniglot")
    data = extract(args.zips, args.cache)
    plan = {"a": ("a", RECOMMENDED, data["small1"]), "b": ("b", "", data["small1"]),
            "c": ("c", RECOMMENDED, data["both"])}
    rows, started = [raw_pixels(data["test"])], time.monotonic()
    for key in args.rows:
        name, flags, folder = plan[key]
        row = train_and_export(name, flags, folder, args.budget, args.runs)
        if key == "c":
            card = args.result.with_name("omniglot-card-small1+small2.json")
            card.write_text(json.dumps(row["card"], indent=2))
            row["card"] = str(card.relative_to(ROOT))
            print(f"[c] card kept in {card}; duplicates: {row['data']}", file=sys.stderr)
        else:
            row.update(measure(row, data["test"]))
            print(markdown([row]).splitlines()[-1], file=sys.stderr, flush=True)
        rows.append(row)
    if args.compare:
        steps = ["--epochs", str(args.compare_steps // 100), "--steps-per-epoch", "100"]
        for k, extra in enumerate(["", *args.compare]):
            row = train_and_export(f"compare-{k}", f"{RECOMMENDED} {extra} {shlex.join(steps)}",
                                   data["small1"], 0, args.runs)
            row.update(measure(row, data["test"]))
            row["row"] = f"+ {extra}" if extra else "recommended"
            rows.append(row)
            print(markdown([row]).splitlines()[-1], file=sys.stderr, flush=True)
    table = markdown([r for r in rows if r["row"] != "c"])
    print(table)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({
        "benchmark": "omniglot proxy: train on images_background_small1, test on the three "
                     "alphabets only in images_background_small2",
        "ways": WAYS, "episodes": EPISODES, "door": {"gallery": GALLERY, "references": 1,
                                                     "strangers": GALLERY,
                                                     "target_fpir": TARGET_FPIR},
        "budget_min": args.budget, "recommended": RECOMMENDED,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other sessions",
        "total_minutes": round((time.monotonic() - started) / 60, 1),
        "rows": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()
