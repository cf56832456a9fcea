"""Training throughput against the CPU's peak (not a test): images/s, FLOPs, GEMM peak, limits.

    nice -n 5 .venv/bin/python bench/train_throughput.py             # ~5 minutes, Omniglot

Builds the trainer exactly as ``twinstream train`` does (``training.train.Trainer``: the
data-aware defaults chosen from the images, the split, the P x K sampler, the model, the loss, the
optimizer) on the first Omniglot zip, for two models: conv4 at 28 px and the default the
data-aware defaults pick for this data (``training/autoconfig.py``). Then, with 1 and 2 torch
threads, it times in turns (``export.timing``: a burst of load from another process hits every
candidate alike):

- ``decode``: a batch's images decoded from PNG (the first epoch; a cache holds them after);
- ``batch``: a batch as the loop draws it, decoded images cached (sampler, turns, mirrors);
- ``augment``: the random affine distortion of a batch (torch ``grid_sample``);
- ``step``: forward, loss, backward and optimizer step on a ready batch;
- ``loop``: batch + augment + step, one after the other, as ``Trainer._train_epoch`` runs them;
- ``step channels-last``: the step on a copy of the model in channels-last memory format (not
  what training uses: the headroom of a layout change, measured);
- ``gemm``: a float32 1024^3 matrix product through torch (the same BLAS), the peak.

FLOPs per training image (forward + backward) are counted by ``torch.utils.flop_counter``;
``of peak`` = (FLOPs per image x images/s) / the GEMM's FLOP/s, best turn against best turn. A
short ``torch.profiler`` run of the step says which operators take its time. Writes
``bench/results/train_throughput.json`` (with the load average at the start and end of each
measurement: the machine is shared) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.timing import timed_turns  # noqa: E402
from training.augment import random_affine  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import ImageSource  # noqa: E402
from training.distributed import Distributed  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.train import Trainer  # noqa: E402

GEMM_N = 1024
ZIP = "images_background_small1"


def omniglot(zips: Path, cache: Path) -> Path:
    """The first Omniglot zip, extracted once (the same cache as bench/omniglot.py)."""
    if not (cache / ZIP).is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zips / f"{ZIP}.zip") as archive:
            archive.extractall(cache)
    return cache / ZIP


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Bench:
    """One model: the real trainer, a ready batch, and the timing candidates."""

    def __init__(self, data: Path, out: Path, **given):
        cfg = TrainConfig.automatic(data=str(data), out=str(out), **given)
        self.lines: list[str] = []
        self.trainer = Trainer(cfg, None, self.lines.append, Distributed())
        t = self.trainer
        self.cfg = t.cfg
        self.batch_size = t.cfg.classes_per_batch * t.cfg.images_per_class
        self.rng, self.gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
        started = time.perf_counter()
        t.train.source.batch(range(len(t.train.labels)))  # every training image decoded once
        self.decode_all_s = time.perf_counter() - started
        self.cold = ImageSource(t.train.source.paths, t.cfg.preprocessing(), cache_mb=0)
        self.x, self.labels = t._batch(self.rng)
        self.x = random_affine(self.x, t.cfg.augment, self.gen)
        # One process: the objective (encoder + loss) is what the loop calls (DDP wraps it only
        # across processes), built here whether or not the trainer has wrapped it yet.
        t.objective.train()
        # The same model and batch in channels-last memory format (not what training uses):
        # the export benchmark found torch's CPU convolutions 1.7-2x faster that way.
        self.cl_model = copy.deepcopy(t.objective).to(memory_format=torch.channels_last)
        self.cl_optimizer = build_optimizer(t.cfg.optimizer, self.cl_model.parameters(),
                                            t.cfg.lr, t.cfg.weight_decay, t.cfg.momentum)
        self.cl_x = self.x.contiguous(memory_format=torch.channels_last)

    def step(self) -> None:
        t = self.trainer
        loss = t.objective(self.x, self.labels)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()

    def step_channels_last(self) -> None:
        loss = self.cl_model(self.cl_x, self.labels)
        self.cl_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.cl_optimizer.step()

    def decode(self) -> None:
        t = self.trainer
        self.cold.batch(t.sampler.batch(self.rng) % t.n_train)

    def batch(self) -> None:
        self.trainer._batch(self.rng)

    def augment(self) -> None:
        random_affine(self.x, self.cfg.augment, self.gen)

    def loop(self) -> None:
        """One iteration of the training loop: what ``twinstream train`` reports as img/s."""
        t = self.trainer
        x, labels = t._batch(self.rng)
        x = random_affine(x, self.cfg.augment, self.gen)
        loss = t.objective(x, labels)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()

    def flops_per_image(self) -> dict:
        """Forward and backward FLOPs of one training image (matmuls and convolutions)."""
        t = self.trainer
        with FlopCounterMode(display=False) as counter:
            loss = t.objective(self.x, self.labels)
            forward = counter.get_total_flops()
            loss.backward()
        t.optimizer.zero_grad(set_to_none=True)
        total = counter.get_total_flops()
        return {"forward": forward / self.batch_size, "total": total / self.batch_size}

    def profile(self, steps: int = 3, top: int = 8) -> list[dict]:
        """Which operators take the step's time (self CPU time, summed over ``steps``)."""
        self.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                self.step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        return [{"op": e.key, "share": e.self_cpu_time_total / total,
                 "ms_per_step": e.self_cpu_time_total / 1000 / steps} for e in events[:top]]


def gemm() -> Callable[[], torch.Tensor]:
    a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
    return lambda: torch.mm(a, b)


def measure(bench: Bench, threads: int, rounds: int, turn_s: float) -> dict:
    torch.set_num_threads(threads)
    began = load_average()
    turns = timed_turns({"gemm": gemm(), "decode": bench.decode, "batch": bench.batch,
                         "augment": bench.augment, "step": bench.step, "loop": bench.loop,
                         "step channels-last": bench.step_channels_last},
                        rounds=rounds, turn_seconds=turn_s, pause=0.1)
    seconds = {name: {"median": statistics.median(v), "best": min(v)}
               for name, v in turns.items()}
    peak = 2 * GEMM_N ** 3 / seconds["gemm"]["best"] / 1e9
    n = bench.batch_size
    per_s = {name: n / seconds[name]["median"] for name in seconds if name != "gemm"}
    return {"threads": threads, "batch": n, "seconds_per_batch": seconds,
            "images_per_s": per_s, "gemm_peak_gflops": peak,
            "load_average_start": began, "load_average_end": load_average()}


def summarise(row: dict) -> None:
    """Achieved FLOP/s and the share of the GEMM peak, for the step alone and the whole loop."""
    flops = row["flops_per_image"]["total"]
    for m in row["threads"]:
        best = {k: m["batch"] / v["best"] for k, v in m["seconds_per_batch"].items()}
        for what in ("step", "loop", "step channels-last"):
            m[f"{what}_gflops"] = flops * best[what] / 1e9
            m[f"{what}_of_peak"] = m[f"{what}_gflops"] / m["gemm_peak_gflops"]
        med = m["seconds_per_batch"]
        m["decode_share_of_first_epoch"] = med["decode"]["median"] / (
            med["decode"]["median"] + med["augment"]["median"] + med["step"]["median"])
        m["batch_and_augment_share_of_loop"] = (med["batch"]["median"]
                                                + med["augment"]["median"]) / med["loop"]["median"]


def tables(rows: list[dict]) -> str:
    lines = ["| model | threads | loop img/s | step img/s | decode img/s | batch (cached) img/s "
             "| augment img/s | GFLOP/image (fwd+bwd) | step GFLOP/s | GEMM peak GFLOP/s | "
             "step of peak | loop of peak | decode share of a first-epoch step | "
             "step channels-last img/s (of peak) | load avg |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: | --- |"]
    for row in rows:
        for m in row["threads"]:
            ips = m["images_per_s"]
            lines.append(
                f"| {row['model']} | {m['threads']} | {ips['loop']:,.0f} | {ips['step']:,.0f} | "
                f"{ips['decode']:,.0f} | {ips['batch']:,.0f} | {ips['augment']:,.0f} | "
                f"{row['flops_per_image']['total'] / 1e9:.3f} | {m['step_gflops']:.1f} | "
                f"{m['gemm_peak_gflops']:.1f} | {100 * m['step_of_peak']:.0f}% | "
                f"{100 * m['loop_of_peak']:.0f}% | {100 * m['decode_share_of_first_epoch']:.0f}% "
                f"| {ips['step channels-last']:,.0f} "
                f"({100 * m['step channels-last_of_peak']:.0f}%) "
                f"| {m['load_average_start'][0]:.1f} → {m['load_average_end'][0]:.1f} |")
    lines += ["", "| model | operator (self CPU time of the step, 1 thread) | share | ms/step |",
              "| --- | --- | ---: | ---: |"]
    for row in rows:
        for op in row["profile_1_thread"]:
            lines.append(f"| {row['model']} | `{op['op']}` | {100 * op['share']:.0f}% | "
                         f"{op['ms_per_step']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--zips", type=Path, default=Path("/work/shared/datasets/omniglot"),
                        help="folder of the Omniglot zips")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/twinstream/omniglot",
                        help="where the zip is extracted (outside the repository)")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure")
    parser.add_argument("--rounds", type=int, default=4, help="turns per candidate")
    parser.add_argument("--turn-seconds", type=float, default=1.5)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench/results/train_throughput.json")
    args = parser.parse_args()
    data = omniglot(args.zips, args.cache)
    thread_counts = [int(t) for t in args.threads.split(",")]
    started = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="twinstream-train-bench-") as tmp:
        models = (("", {"arch": "conv4", "image_size": 28}),
                  ("data-aware default: ", {}))  # what `twinstream train` picks for this data
        for number, (prefix, given) in enumerate(models):
            print(f"model {number + 1}: setting up the trainer", file=sys.stderr)
            bench = Bench(data, Path(tmp) / f"run{number}", **given)
            cfg = bench.cfg
            label = f"{prefix}{cfg.arch} {cfg.image_size} px"
            row = {"model": label,
                   "config": {k: getattr(cfg, k) for k in (
                       "arch", "image_size", "channels", "loss", "classes_per_batch",
                       "images_per_class", "quarter_turns", "mirror", "optimizer")},
                   "auto_choices": [line for line in bench.lines if line.startswith("auto:")],
                   "train_images": len(bench.trainer.train.labels),
                   "decode_all_training_images_s": bench.decode_all_s,
                   "flops_per_image": bench.flops_per_image()}
            torch.set_num_threads(1)
            row["profile_1_thread"] = bench.profile()
            row["threads"] = []
            for threads in thread_counts:
                print(f"{label}: timing with {threads} thread(s)", file=sys.stderr)
                row["threads"].append(measure(bench, threads, args.rounds, args.turn_seconds))
            rows.append(row)
    for row in rows:
        summarise(row)
    result = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "gemm_n": GEMM_N, "estimated": False,
              "load_average_start": started, "load_average_end": load_average(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"### Training throughput (Omniglot {ZIP}; load average {started[0]:.1f} → "
          f"{result['load_average_end'][0]:.1f} on {os.cpu_count()} cores, shared)\n")
    print(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
