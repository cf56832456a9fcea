"""The worker's own overhead, on pinned cores: how much CPU a record costs beyond inference.

Measured side by side in one run, with the same model, batch and images:

- **raw**: onnxruntime alone on core 0, one thread, preprocessed batches in, embeddings out;
- **end to end**: one whole worker process on core 0 (onnxruntime one thread), while the broker,
  Redis and this script (the producer; it publishes every record before the worker starts)
  run on core 1. Rate from 10 % to 90 % of the records (steady state, without the group join
  and the tail); efficiency = end-to-end images/s / raw images/s, raw being the mean of the
  raw runs just before and just after (drift on the shared machine weighs on both sides);
- **CPU per record beyond inference**: the worker's CPU per record over the same span minus the
  raw run's CPU per record, split by the worker's threads (each thread's own CPU clock, read
  inside the worker process): the reader (poll, record parsing, offsets, commit), the Kafka
  client's network thread, decode (message parse, PNG decode, preprocessing, thumbnail), the
  embed step beyond onnxruntime, the Redis writer, the durability step, the rest;
- the decode step's parts, one image at a time in this process: message parse, image decode,
  preprocessing, thumbnail (so the cost of thumbnails shows alone);
- variants: thumbnails on (the default) and off (``TWINSTREAM_WORKER_THUMBNAILS=false``);
  durability ``local`` (WAITAOF on a Redis with ``appendfsync everysec``, the crash-safety
  wait) beside ``none``; and a realistic encoder, ResNet-18 at 112 px.

Targets (issue 16): overhead <= 150 us per record; pinned efficiency >= 0.85 for the demo
encoder (``small`` at 64 px) and >= 0.95 for a ResNet-18-sized encoder at 112 px.

Needs two cores and a quiet machine (``taskset`` semantics through ``os.sched_setaffinity``):

    .venv/bin/python bench/worker_overhead.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline_bench import make_images, publish, train_small_model  # noqa: E402

from twinstream.messages import ImageMessage  # noqa: E402
from twinstream.preprocess import decode_image, image_to_array, preprocess_bytes  # noqa: E402
from twinstream.runtime import Encoder  # noqa: E402
from twinstream.settings import child_env, load_settings  # noqa: E402
from twinstream.stack import LocalStack, redis_process, with_services  # noqa: E402
from twinstream.thumbnails import make_thumbnail  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "worker_overhead.json"
WORKER_CORE, SERVICE_CORE = 0, 1
SAMPLE_EVERY_S = 0.2

# Worker threads by name prefix -> the part of the work they do (see worker/consumer.py).
THREAD_PARTS = (
    ("MainThread", "reader: poll, record parsing, offsets, commit"),
    ("kafka-io", "Kafka consumer network thread"),
    ("step-decode", "decode"),
    ("decode", "decode"),
    ("step-embed", "embed step (onnxruntime, stacking the batch)"),
    ("step-write", "write to Redis and dead letters"),
    ("step-durable", "durability step"),
    ("twinstream-dlq", "dead-letter producer thread"),
    ("heartbeat", "heartbeat"),
)


EMBED_PART = "embed step (onnxruntime, stacking the batch)"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pin_self(core: int) -> None:
    os.sched_setaffinity(0, {core})


def part_of(thread_name: str) -> str:
    for prefix, part in THREAD_PARTS:
        if thread_name.startswith(prefix):
            return part
    return "other threads"


# --- the two sides, each a child process pinned to the worker's core ---------------------------

def raw_child(model: str, batch: int, seconds: float, out: str) -> None:
    """onnxruntime alone, one thread: images/s and CPU seconds per image."""
    pin_self(WORKER_CORE)
    encoder = Encoder(model, threads=1)
    images = make_images(batch, seed=3)
    arrays = np.stack([preprocess_bytes(b, encoder.card.preprocessing) for b in images])
    encoder.embed_arrays(arrays)  # warm-up
    done, started, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        encoder.embed_arrays(arrays)
        done += batch
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    Path(out).write_text(json.dumps({"images_per_s": done / wall, "cpu_s_per_image": cpu / done}))


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by the part of the work it does."""
    parts: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, TypeError, ProcessLookupError):
            continue  # ended between enumerate and the read
        part = part_of(t.name)
        parts[part] = parts.get(part, 0.0) + seconds
    return parts


def worker_child(out: str) -> None:
    """One worker (settings from the environment) plus a sampler of its threads' CPU clocks and
    its record count, written as JSON lines for the parent to cut the steady window from."""
    from worker.consumer import Worker
    from worker.logs import configure

    pin_self(WORKER_CORE)
    settings = load_settings(os.environ)
    configure(settings.worker.log_format, "bench", quiet=True)
    worker = Worker(settings, "bench-overhead")
    worker.install_signal_handlers((signal.SIGTERM, signal.SIGINT))
    sampler_ident: list[int] = []

    def sample() -> None:
        sampler_ident.append(threading.get_ident())
        with open(out, "a") as f:
            while True:
                parts = thread_cpu()
                f.write(json.dumps({"t": time.monotonic(), "records": worker.stats.records,
                                    "process_cpu_s": time.process_time(),
                                    "threads": parts}) + "\n")
                f.flush()
                time.sleep(SAMPLE_EVERY_S)

    threading.Thread(target=sample, name="bench-sampler", daemon=True).start()
    worker.run()


def run_child(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


# --- measurements (this process and the services on the other core) ----------------------------

def raw(model: Path, batch: int, seconds: float, workdir: Path) -> dict:
    out = workdir / "raw.json"
    proc = run_child(["--raw-child", str(model), str(batch), str(seconds), str(out)])
    if proc.wait() != 0:
        raise RuntimeError("the raw onnxruntime child failed")
    return json.loads(out.read_text())


def steady_window(samples: list[dict], n: int) -> tuple[dict, dict]:
    """The first samples at or past 10 % and 90 % of the records."""
    first = next(s for s in samples if s["records"] >= 0.1 * n)
    last = next(s for s in samples if s["records"] >= 0.9 * n)
    return first, last


def end_to_end(settings, images: list[bytes], workdir: Path, tag: str,
               extra_env: dict[str, str]) -> dict:
    """Records already in the topic; one pinned worker; rate and CPU per record, steady state."""
    n = len(images)
    publish(settings, images)
    out = workdir / f"samples-{tag}.jsonl"
    out.unlink(missing_ok=True)
    proc = run_child(["--worker-child", str(out)],
                     env=child_env(settings, os.environ) | extra_env)
    deadline = time.monotonic() + 60 + n / 10
    samples: list[dict] = []
    try:
        while not samples or samples[-1]["records"] < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker stopped or is too slow ({tag})")
            time.sleep(0.5)
            if out.exists():
                samples = [json.loads(line) for line in out.read_text().splitlines()
                           if line.endswith("}")]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    first, last = steady_window(samples, n)
    records = last["records"] - first["records"]
    span = last["t"] - first["t"]
    parts = {part: (last["threads"].get(part, 0.0) - first["threads"].get(part, 0.0)) / records
             for part in last["threads"]}
    return {"images": n, "images_per_s": round(records / span, 1),
            "cpu_us_per_record": round(1e6 * (last["process_cpu_s"] - first["process_cpu_s"])
                                       / records, 1),
            "threads_us_per_record": {p: round(1e6 * s, 1) for p, s in sorted(parts.items())},
            "core_busy": round((last["process_cpu_s"] - first["process_cpu_s"]) / span, 3)}


def decode_parts(model: Path, images: list[bytes], repeats: int = 3) -> dict:
    """The decode step's parts, one image at a time in this process (µs per image, best of
    ``repeats`` passes): what each costs without threads in the way."""
    spec = Encoder(model, threads=1).card.preprocessing
    records = [ImageMessage(id=f"i{i}", data=b, content_type="image/png").to_record()
               for i, b in enumerate(images)]
    decoded = [decode_image(b) for b in images]
    steps = {
        "message parse": lambda: [ImageMessage.from_record(*r) for r in records],
        "image decode": lambda: [decode_image(b) for b in images],
        "preprocess": lambda: [image_to_array(img, spec) for img in decoded],
        "thumbnail": lambda: [make_thumbnail(img) for img in decoded],
    }
    out = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(repeats):
            started = time.process_time()
            step()
            best = min(best, time.process_time() - started)
        out[name] = round(1e6 * best / len(images), 1)
    return out


def resnet_model(workdir: Path, size: int) -> Path:
    """A ResNet-18 encoder at ``size`` px, trained for two steps: the weights do not change the
    cost of inference, only the architecture and input size do."""
    from export.onnx_export import export_onnx
    from training.shapes import generate_shapes
    from training.train import TrainConfig, train

    data = workdir / "shapes-r18"
    generate_shapes(data, per_class=8, seed=1)
    result = train(TrainConfig(data=str(data), out=str(workdir / "run-r18"), arch="resnet18",
                               image_size=size, epochs=1, steps_per_epoch=2, seed=0),
                   log=lambda _m: None)
    out = workdir / f"resnet18-{size}.onnx"
    samples = sorted(data.rglob("*.png"))[:8]
    export_onnx(result.checkpoint, out, [p.read_bytes() for p in samples])
    return out


# --- the run -----------------------------------------------------------------------------------

# What each variant changes from the defaults (``worker``: worker settings; ``durable``: a Redis
# with AOF and TWINSTREAM_REDIS_DURABILITY=local; ``child_env``: the worker process's environment).
VARIANTS: dict[str, dict] = {
    "demo": {"label": "demo (small 64 px), defaults (thumbnails on)",
             "describe": {"thumbnails": True, "durability": "none"}},
    "demo-no-thumbnails": {"label": "demo, thumbnails off", "worker": {"thumbnails": False},
                           "describe": {"thumbnails": False, "durability": "none"}},
    "demo-one-decode-thread": {"label": "demo, 1 decode thread", "worker": {"decode_threads": 1},
                               "describe": {"thumbnails": True, "decode_threads": 1}},
    "demo-durable": {"label": "demo, durability local (WAITAOF, appendfsync everysec)",
                     "durable": True, "describe": {"thumbnails": True, "durability": "local"}},
    "resnet18": {"label": "ResNet-18 {size} px, defaults (thumbnails on)", "resnet": True,
                 "describe": {"thumbnails": True, "durability": "none"}},
    "resnet18-no-thumbnails": {"label": "ResNet-18 {size} px, thumbnails off", "resnet": True,
                               "worker": {"thumbnails": False},
                               "describe": {"thumbnails": False, "durability": "none"}},
}

def measure(label: str, model: Path, images: list[bytes], base, workdir: Path, args,
            variant: dict) -> dict:
    """raw, end to end, raw again: one row of the table."""
    slug = "".join(c if c.isalnum() else "-" for c in label.lower())
    s = replace(base, model=replace(base.model, path=str(model), threads=1),
                worker=replace(base.worker, batch=args.batch, **variant.get("worker", {})),
                redis=replace(base.redis, **variant.get("redis", {})),
                kafka=replace(base.kafka, topic=f"overhead-{slug}", group=f"overhead-{slug}"))
    s = replace(s, redis=replace(s.redis, index=f"overhead-{slug}"))
    log(f"{label}: raw onnxruntime on core {WORKER_CORE}")
    before = raw(model, args.batch, args.raw_seconds, workdir)
    log(f"{label}: end to end, {len(images):,} records, worker on core {WORKER_CORE}, "
        f"services on core {SERVICE_CORE}")
    e2e = end_to_end(s, images, workdir, slug, variant.get("child_env", {}))
    log(f"{label}: raw onnxruntime again")
    after = raw(model, args.batch, args.raw_seconds, workdir)
    raw_rate = statistics.fmean([before["images_per_s"], after["images_per_s"]])
    raw_cpu_us = 1e6 * statistics.fmean([before["cpu_s_per_image"], after["cpu_s_per_image"]])
    threads = e2e["threads_us_per_record"]
    # Inference as the worker itself ran it, in the same seconds as everything else: the embed
    # thread (onnxruntime runs its one intra-op thread in the caller; plus np.stack of the batch,
    # a few µs per image). So the split below does not depend on the machine's speed drifting
    # between the raw runs and this one; the raw runs give the efficiency and how much
    # slower onnxruntime runs beside the worker's other threads than alone.
    inference_us = threads.get(EMBED_PART, 0.0)
    beyond = {part: us for part, us in threads.items() if part != EMBED_PART}
    row = {"label": label, **variant.get("describe", {}),
           "raw_images_per_s": round(raw_rate, 1),
           "raw_runs": [round(before["images_per_s"], 1), round(after["images_per_s"], 1)],
           "raw_cpu_us_per_image": round(raw_cpu_us, 1),
           **e2e,
           "efficiency": round(e2e["images_per_s"] / raw_rate, 3),
           "inference_us_per_record": round(inference_us, 1),
           "inference_share": round(inference_us / e2e["cpu_us_per_record"], 3),
           "inference_vs_raw": round(inference_us / raw_cpu_us, 3),
           "overhead_us_per_record": round(e2e["cpu_us_per_record"] - inference_us, 1),
           "overhead_by_part_us": dict(sorted(beyond.items(), key=lambda kv: -kv[1])),
           "estimated": False}
    log(f"{label}: {row['images_per_s']:.0f} images/s end to end against "
        f"{raw_rate:.0f} raw: efficiency {row['efficiency']:.3f}, overhead "
        f"{row['overhead_us_per_record']:.0f} us/record")
    return row


def save_progress(out: str, rows: list[dict]) -> None:
    """The rows so far (a run stopped part way keeps them); the full report replaces it."""
    if rows:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"partial": True, "rows": rows}, indent=2) + "\n")


def summarise(rows: list[dict]) -> dict:
    """Per variant, the median of its runs."""
    out: dict[str, dict] = {}
    for key in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == key]
        out[key] = {field: round(statistics.median(r[field] for r in runs), 3)
                    for field in ("efficiency", "overhead_us_per_record", "inference_share",
                                  "inference_vs_raw", "images_per_s", "raw_images_per_s")
                    } | {"runs": len(runs)}
    return out


def table(report: dict) -> str:
    lines = ["| encoder, variant | raw images/s (core 0, 1 thread) | end to end images/s | "
             "efficiency | onnxruntime share of the worker's CPU | onnxruntime in the worker "
             "/ alone | CPU µs/record beyond inference | largest parts (µs/record) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        parts = ", ".join(f"{p} {us:.0f}" for p, us in list(r["overhead_by_part_us"].items())[:4])
        lines.append(f"| {r['label']} | {r['raw_images_per_s']:.0f} | {r['images_per_s']:.0f} | "
                     f"{r['efficiency']:.3f} | {r['inference_share']:.3f} | "
                     f"{r['inference_vs_raw']:.2f} | {r['overhead_us_per_record']:.0f} | "
                     f"{parts} |")
    lines += ["", "| variant (median of its runs) | efficiency | onnxruntime share | "
              "CPU µs/record beyond inference |", "| --- | --- | --- | --- |"]
    for key, summary in report["summary"].items():
        lines.append(f"| {key} | {summary['efficiency']:.3f} | "
                     f"{summary['inference_share']:.3f} | "
                     f"{summary['overhead_us_per_record']:.0f} |")
    d = report["decode_parts_us"]
    lines.append("")
    lines.append("Decode step, one image at a time (µs per image): "
                 + ", ".join(f"{k} {v:.0f}" for k, v in d.items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="the demo-sized encoder (default: train `small` at "
                        "64 px briefly)")
    parser.add_argument("--train-seconds", type=float, default=30)
    parser.add_argument("--images", type=int, default=12_000, help="records per demo run")
    parser.add_argument("--resnet-images", type=int, default=1_500,
                        help="records for the ResNet-18 runs")
    parser.add_argument("--resnet-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--raw-seconds", type=float, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"which to run, of: {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each variant, interleaved (the table shows each)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("error: needs two cores (one for the worker, one for the services)",
              file=sys.stderr)
        return 2
    pin_self(SERVICE_CORE)  # this script and the services it starts (they inherit it)

    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        print(f"error: unknown variants {unknown}; choose from {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="worker-overhead-") as tmp:
        workdir = Path(tmp)
        if args.model:
            model = Path(args.model)
        else:
            log(f"training the demo encoder (small, 64 px) for {args.train_seconds:.0f} s")
            model = train_small_model(workdir, args.train_seconds)
        images = make_images(args.images, seed=7)
        r18 = None
        if any(VARIANTS[v].get("resnet") for v in chosen):
            log(f"building a ResNet-18 encoder at {args.resnet_size} px")
            r18 = resnet_model(workdir, args.resnet_size)
        rows = []
        with LocalStack(workdir=workdir / "stack") as stack:
            base = with_services(load_settings({}), stack)
            aof = redis_process(workdir / "aof", appendonly=True,
                                extra_args=["--appendfsync", "everysec"]).start()
            try:
                for repeat in range(args.repeats):  # variants interleaved: drift hits them all
                    for key in chosen:
                        variant = dict(VARIANTS[key])
                        if variant.get("durable"):
                            variant["redis"] = {"url": f"redis://127.0.0.1:{aof.port}/0",
                                                "durability": "local"}
                        resnet = variant.get("resnet")
                        label = variant["label"].format(size=args.resnet_size)
                        rows.append(measure(
                            f"{label} #{repeat + 1}", r18 if resnet else model,
                            images[:args.resnet_images] if resnet else images, base, workdir,
                            args, variant) | {"variant": key, "repeat": repeat + 1})
                        save_progress(args.out, rows)
            finally:
                aof.stop()
        decode = decode_parts(model, images[:2000])
        card = Encoder(model, threads=1).card
    report = {
        "model": {"arch": card.architecture.get("arch", "?"),
                  "input": list(card.preprocessing.shape), "dim": card.embedding_dim},
        "batch": args.batch, "rows": rows, "summary": summarise(rows),
        "decode_parts_us": decode,
        "targets": {"overhead_us_per_record": 150, "efficiency_demo": 0.85,
                    "efficiency_resnet18_112": 0.95},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "pinning": f"worker core {WORKER_CORE}, broker+Redis+producer core "
                               f"{SERVICE_CORE}"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-child":
        raw_child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker-child":
        worker_child(sys.argv[2])
    else:
        sys.exit(main())
