"""End-to-end throughput, memory and latency of the streaming pipeline (broker -> worker -> Redis).

Measured side by side in one run, on the same machine and the same model and batch size:

- raw onnxruntime throughput: ``Encoder.embed_arrays`` on preprocessed batches (the ceiling);
- end-to-end images/s with 1 and 2 worker processes: records already in the topic, rate between
  10 % and 90 % of them indexed (steady state, without the group join and the tail);
  pipeline efficiency = end-to-end / raw, raw being the mean of the raw runs just before and
  just after that end-to-end run (the machine's load drifts; this keeps both sides comparable);
- the CPU time the worker, Redis and the broker each spend per image in that span: where the
  cores go (the index insert and the broker share them with inference);
- the worker's resident memory (RSS) along 10,000 images: it should stay flat;
- publish -> queryable latency at a steady moderate rate: the time from ``send`` to the id
  answering ``VISMEMBER`` in Redis, p50/p90/p99;
- the cost of durable-before-commit (``worker/durable.py``): one process on a Redis with AOF,
  ``TWINSTREAM_REDIS_DURABILITY`` none vs local (WAITAOF) with ``appendfsync everysec`` (the
  default: a wait lasts until the next once-a-second fsync, so throughput is bounded by
  ``max_in_flight`` batches a second), the same with more batches in flight, and local with
  ``appendfsync always`` (WAITAOF answers at once; every write loop fsyncs). ``--only-durability``
  runs just this part.

The model is realistic, not the tests' tiny one: the ``small`` architecture trained briefly on
coloured shapes at 64x64 (or ``--model``). Run it when nothing else is busy, and read the
ratios rather than the absolute numbers on a shared machine:

    nice -n 5 .venv/bin/python bench/pipeline_bench.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
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

from index.store import VectorIndex, connect  # noqa: E402
from twinstream.messages import ImageMessage, content_id  # noqa: E402
from twinstream.preprocess import preprocess_bytes  # noqa: E402
from twinstream.runtime import Encoder  # noqa: E402
from twinstream.settings import child_env, load_settings  # noqa: E402
from twinstream.stack import LocalStack, redis_process, with_services  # noqa: E402
from worker.heartbeat import list_workers  # noqa: E402
from worker.kafka_io import ensure_topics, make_producer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "pipeline.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- inputs ------------------------------------------------------------------------------------

def train_small_model(workdir: Path, seconds: float, seed: int = 0) -> Path:
    """The ``small`` encoder trained on coloured shapes; another ``seed`` gives other weights,
    hence another model version (the version is the content hash of the weights)."""
    from export.onnx_export import export_onnx
    from training.shapes import generate_shapes
    from training.train import TrainConfig, train

    data = workdir / "shapes"
    generate_shapes(data, per_class=60, seed=1)
    result = train(TrainConfig(data=str(data), out=str(workdir / "run"), arch="small",
                               epochs=3, time_budget_s=seconds, seed=seed), log=lambda _m: None)
    out = workdir / "small.onnx"
    samples = sorted(data.rglob("*.png"))[:32]
    export_onnx(result.checkpoint, out, [p.read_bytes() for p in samples])
    return out


def make_images(n: int, seed: int) -> list[bytes]:
    """``n`` distinct 64x64 shape PNGs (a few KB each), rendered in memory."""
    from training.shapes import COLOURS, SHAPES, render_shape

    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    out = []
    for i in range(n):
        colour, shape = pairs[i % len(pairs)]
        buf = io.BytesIO()
        render_shape(rng, colour, shape, 64).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# --- measurements ------------------------------------------------------------------------------

def raw_throughput(model: Path, images: list[bytes], batch: int, seconds: float,
                   threads: int = 0) -> float:
    """onnxruntime alone: preprocessed batches in, embeddings out (images/s)."""
    encoder = Encoder(model, threads=threads)
    arrays = np.stack([preprocess_bytes(b, encoder.card.preprocessing) for b in images[:batch]])
    encoder.embed_arrays(arrays)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encoder.embed_arrays(arrays)
        done += batch
    return done / (time.perf_counter() - started)


def publish(settings, images: list[bytes]) -> list[str]:
    ensure_topics(settings.kafka)
    producer = make_producer(settings.kafka, linger_ms=20)
    ids = []
    for data in images:
        msg = ImageMessage(id=content_id(data), data=data, content_type="image/png",
                           attributes={"label": "bench"})
        key, value, headers = msg.to_record()
        producer.send(settings.kafka.topic, key=key, value=value, headers=headers)
        ids.append(msg.id)
    producer.flush(60)
    producer.close(10)
    return ids


def environment(settings) -> dict:
    quick_join = replace(settings, kafka=replace(settings.kafka, session_timeout_ms=6000))
    return child_env(quick_join, os.environ)


def start_workers(settings, processes: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "twinstream", "worker", "-q", "--processes", str(processes)],
        env=environment(settings), cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (a worker pool's processes)."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by the worker(s), Redis and the broker between two marks: where the
    two cores went while the pipeline ran."""

    def __init__(self, worker_pid: int, services: dict[str, int]):
        self.worker_pid = worker_pid
        self.services = services
        self.start: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        now = {"worker": cpu_seconds(process_tree(self.worker_pid)),
               **{name: cpu_seconds([pid]) for name, pid in self.services.items()}}
        now["wall"] = time.monotonic()
        return now

    def mark(self) -> None:
        self.start = self.read()

    def per_image_ms(self, images: int) -> dict[str, float]:
        end = self.read()
        return {name: round(1000 * (end[name] - self.start[name]) / images, 3)
                for name in end if name != "wall"} | {
            "cores_busy": round(sum(end[n] - self.start[n] for n in end if n != "wall")
                                / (end["wall"] - self.start["wall"]), 2)}


def index_count(settings) -> int:
    client = connect(settings.redis.url)
    if VectorIndex.live_version(client, settings.redis.index) is None:
        return 0
    return VectorIndex.live(client, settings.redis.index).count()


def end_to_end(settings, images: list[bytes], processes: int, services: dict[str, int],
               rss_every: int = 0) -> dict:
    """Images already in the topic; workers start; steady-state rate from 10 % to 90 %, and the
    CPU time each process spent per image over the same span."""
    n = len(images)
    publish(settings, images)
    proc = start_workers(settings, processes)
    meter = CpuMeter(proc.pid, services)
    cpu = {}
    marks: dict[float, float] = {}
    rss: list[tuple[int, float]] = []
    next_rss = rss_every
    deadline = time.monotonic() + 30 + n / 20
    try:
        while (count := index_count(settings)) < n:
            now = time.monotonic()
            for fraction in (0.1, 0.9):
                if count >= fraction * n and fraction not in marks:
                    marks[fraction] = now
                    marks[f"count{fraction}"] = count
                    if fraction == 0.1:
                        meter.mark()
                    else:
                        cpu = meter.per_image_ms(max(1, count - marks["count0.1"]))
            if rss_every and count >= next_rss:
                rss.append((count, round(rss_mb(proc.pid), 1)))
                next_rss += rss_every
            if proc.poll() is not None or now > deadline:
                raise RuntimeError(f"workers stopped or too slow: {count}/{n} indexed")
            time.sleep(0.05)
        if rss_every:
            time.sleep(0.5)
            rss.append((n, round(rss_mb(proc.pid), 1)))
    finally:
        stop(proc)
    span = marks[0.9] - marks[0.1]
    rate = (marks["count0.9"] - marks["count0.1"]) / span if span > 0 else float("nan")
    return {"processes": processes, "images": n, "images_per_s": round(rate, 1),
            "rss_mb": rss, "cpu_ms_per_image": cpu}


def latency(settings, images: list[bytes], rate: float) -> dict:
    """Publish at ``rate``/s to a running worker; publish -> queryable, per image."""
    ensure_topics(settings.kafka)
    proc = start_workers(settings, 1)
    client = connect(settings.redis.url)
    try:
        deadline = time.monotonic() + 60
        while not any(w["partitions"] for w in list_workers(client, settings.kafka.group)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the latency worker did not join its group")
            time.sleep(0.1)
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        lock = threading.Lock()
        finished = threading.Event()

        def poll_redis() -> None:
            vset = None
            while not finished.is_set() or len(seen) < len(sent):
                if vset is None and VectorIndex.live_version(client, settings.redis.index):
                    vset = VectorIndex.live(client, settings.redis.index).vset
                with lock:
                    waiting = [i for i in sent if i not in seen]
                if vset and waiting:
                    pipe = client.pipeline(transaction=False)
                    for image_id in waiting:
                        pipe.execute_command("VISMEMBER", vset, image_id)
                    now = time.monotonic()
                    for image_id, present in zip(waiting, pipe.execute(), strict=True):
                        if present:
                            seen[image_id] = now
                time.sleep(0.005)

        poller = threading.Thread(target=poll_redis, daemon=True)
        poller.start()
        producer = make_producer(settings.kafka, linger_ms=0)
        started = time.monotonic()
        for i, data in enumerate(images):
            msg = ImageMessage(id=content_id(data), data=data, content_type="image/png")
            key, value, headers = msg.to_record()
            pause = started + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with lock:
                sent[msg.id] = time.monotonic()
            producer.send(settings.kafka.topic, key=key, value=value, headers=headers)
        producer.flush(30)
        producer.close(10)
        finished.set()
        poller.join(60)
    finally:
        stop(proc)
    ms = sorted((seen[i] - sent[i]) * 1000 for i in seen)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 1)

    return {"rate_per_s": rate, "images": len(images), "queryable": len(ms),
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(ms[-1], 1),
            "mean_ms": round(statistics.fmean(ms), 1)}


def durability_cost(settings, images: list[bytes], workdir: Path, services: dict) -> list[dict]:
    """One process, the same images, on a Redis with AOF: none vs local, side by side."""
    variants = [("none", "everysec", 0), ("local", "everysec", 0), ("local", "everysec", 12),
                ("local", "always", 0)]
    rows = []
    for i, (level, fsync, in_flight) in enumerate(variants):
        redis = redis_process(workdir / f"aof-{i}", appendonly=True,
                              extra_args=["--appendfsync", fsync]).start()
        try:
            s = replace(settings, redis=replace(settings.redis, durability=level,
                                                url=f"redis://127.0.0.1:{redis.port}/0",
                                                index=f"bench-durable-{i}"),
                        kafka=replace(settings.kafka, topic=f"bench-durable-{i}",
                                      group=f"bench-durable-{i}"))
            if in_flight:
                s = replace(s, worker=replace(s.worker, max_in_flight=in_flight))
            log(f"durability {level}, appendfsync {fsync}, max_in_flight "
                f"{s.worker.max_in_flight}: {len(images):,} images")
            result = end_to_end(s, images, 1, {**services, "redis": redis.pid})
        finally:
            redis.stop()
        rows.append({"durability": level, "appendfsync": fsync,
                     "max_in_flight": s.worker.max_in_flight,
                     "images_per_s": result["images_per_s"]})
    base = rows[0]["images_per_s"]
    for row in rows:
        row["vs_none"] = round(row["images_per_s"] / base, 3) if base else None
    return rows


def efficiency_ceiling(raw_images_per_s: float, cpu_ms_per_image: dict) -> float:
    """The best end-to-end / raw ratio possible when Redis and the broker run on the cores the
    raw inference had to itself: inference's CPU per image plus theirs, nothing else."""
    cores = os.cpu_count() or 1
    inference_ms = 1000 * cores / raw_images_per_s  # all cores busy in the raw run
    services_ms = cpu_ms_per_image["redis"] + cpu_ms_per_image["broker"]
    return round(inference_ms / (inference_ms + services_ms), 3)


# --- report ------------------------------------------------------------------------------------

def table(r: dict) -> str:
    rows = [
        "| measurement | value |",
        "| --- | --- |",
        f"| raw onnxruntime, batch {r['batch']}, default threads (images/s) | "
        f"{r['raw_images_per_s']:.0f} (measured {', '.join(f'{x:.0f}' for x in r['raw_runs'])}) |",
        f"| raw onnxruntime, batch {r['batch']}, 1 thread (images/s) | "
        f"{r['raw_one_thread_images_per_s']:.0f} |",
    ]
    raw_ms = 1000 / r["raw_one_thread_images_per_s"]
    for e in r["end_to_end"]:
        rows.append(f"| end to end, {e['processes']} process(es) (images/s) | "
                    f"{e['images_per_s']:.0f} (efficiency {e['efficiency']:.2f} against the "
                    f"raw runs just before and after: {e['raw_around']:.0f}) |")
        cpu = e["cpu_ms_per_image"]
        rows.append(f"| CPU ms per image, {e['processes']} process(es) | worker "
                    f"{cpu['worker']:.2f}, Redis {cpu['redis']:.2f}, broker "
                    f"{cpu['broker']:.2f} ({cpu['cores_busy']:.2f} cores busy; raw inference "
                    f"alone {raw_ms:.2f} at 1 thread) |")
    first = r["end_to_end"][0]
    rows.append(f"| efficiency ceiling with Redis on the same cores | {first['ceiling']:.2f} "
                f"(a worker costing nothing beyond inference, Redis's measured CPU per image "
                f"beside it) |")
    rss = r["end_to_end"][0]["rss_mb"]
    if rss:
        points = ", ".join(f"{mb:.0f} MB @ {n:,}" for n, mb in rss[:: max(1, len(rss) // 5)])
        rows.append(f"| worker RSS along {rss[-1][0]:,} images | {points}; last "
                    f"{rss[-1][1]:.0f} MB |")
    lat = r["latency"]
    rows.append(f"| publish -> queryable at {lat['rate_per_s']:.0f} images/s | "
                f"p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms, "
                f"p99 {lat['p99_ms']:.0f} ms |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an exported .onnx (default: train `small` briefly)")
    parser.add_argument("--train-seconds", type=float, default=90)
    parser.add_argument("--images", type=int, default=10_000, help="for 1 process and RSS")
    parser.add_argument("--images-two", type=int, default=5_000, help="for 2 processes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--raw-seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=0,
                        help="latency run: images/s (default: a quarter of the measured "
                             "one-process throughput, a steady moderate load)")
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--durability-images", type=int, default=2_000,
                        help="images per durability variant")
    parser.add_argument("--only-durability", action="store_true",
                        help="run only the durability comparison (own JSON: pipeline-durable)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.only_durability:
        return durability_only(args)

    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        workdir = Path(tmp)
        if args.model:
            model = Path(args.model)
        else:
            log(f"training the small encoder on shapes ({args.train_seconds:.0f} s budget)")
            model = train_small_model(workdir, args.train_seconds)
        log(f"rendering {args.images + args.images_two:,} images")
        images = make_images(args.images + args.images_two, seed=7)
        one, two = images[:args.images], images[args.images:]

        def raw(threads: int = 0) -> float:
            log(f"raw onnxruntime throughput ({threads or 'default'} threads)")
            return raw_throughput(model, one, args.batch, args.raw_seconds, threads)

        card = Encoder(model).card
        base = load_settings({})
        raws = [raw()]
        raw_one_thread = raw(1)
        with LocalStack(workdir=workdir / "stack") as stack:
            s = with_services(base, stack)
            s = replace(s, model=replace(s.model, path=str(model)),
                        worker=replace(s.worker, batch=args.batch))

            def named(tag: str):
                return replace(s, kafka=replace(s.kafka, topic=f"bench-{tag}",
                                                group=f"bench-{tag}"),
                               redis=replace(s.redis, index=f"bench-{tag}"))

            # Each end-to-end run sits between two raw runs; its efficiency uses their mean, so
            # that a neighbour's load on the shared machine weighs on both sides of the ratio.
            results = []
            log(f"end to end, 1 process, {len(one):,} images (RSS sampled)")
            services = {"redis": stack.redis.pid, "broker": stack.broker.pid}
            results.append(end_to_end(named("one"), one, 1, services, rss_every=1000))
            raws.append(raw())
            log(f"end to end, 2 processes, {len(two):,} images")
            results.append(end_to_end(named("two"), two, 2, services))
            raws.append(raw())
            for i, e in enumerate(results):
                e["raw_around"] = round((raws[i] + raws[i + 1]) / 2, 1)
                e["efficiency"] = round(e["images_per_s"] / e["raw_around"], 3)
                e["ceiling"] = efficiency_ceiling(e["raw_around"], e["cpu_ms_per_image"])
            rate = args.rate or max(5.0, round(results[0]["images_per_s"] / 4))
            late = make_images(int(rate * args.latency_seconds), seed=8)
            log(f"latency at {rate:.0f} images/s for {args.latency_seconds:.0f} s")
            lat = latency(named("latency"), late, rate)

    report = {
        "model": {"arch": card.architecture.get("arch", "?"), "version": card.version,
                  "input": list(card.preprocessing.shape), "dim": card.embedding_dim},
        "batch": args.batch,
        "raw_images_per_s": round(statistics.fmean(raws), 1),
        "raw_runs": [round(x, 1) for x in raws],
        "raw_one_thread_images_per_s": round(raw_one_thread, 1),
        "end_to_end": results,
        "latency": lat,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "shared machine; numbers are noisy, read the ratios"},
    }
    report["efficiency_one_process"] = results[0]["efficiency"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {args.out}")


def durability_only(args) -> None:
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        workdir = Path(tmp)
        model = Path(args.model) if args.model else train_small_model(workdir, args.train_seconds)
        images = make_images(args.durability_images, seed=9)
        with LocalStack(workdir=workdir / "stack", redis_url="unused://") as stack:
            s = with_services(load_settings({}), stack)
            s = replace(s, model=replace(s.model, path=str(model)),
                        worker=replace(s.worker, batch=args.batch))
            rows = durability_cost(s, images, workdir, {"broker": stack.broker.pid})
    out = Path(args.out).with_name("pipeline-durable.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": args.batch, "images": len(images), "variants": rows,
                               "machine": {"cpus": os.cpu_count(),
                                           "note": "shared machine; read the ratios"}},
                              indent=2) + "\n")
    print("durability  appendfsync  max_in_flight  images/s  vs none")
    for r in rows:
        print(f"{r['durability']:10s}  {r['appendfsync']:11s}  {r['max_in_flight']:13d}  "
              f"{r['images_per_s']:8.1f}  {r['vs_none']}")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
