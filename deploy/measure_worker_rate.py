"""Measure what one worker consumer drains per second: the number the KEDA lagThreshold rests on.

    python deploy/measure_worker_rate.py --model demo-out/model.onnx --images demo-out/data

Publishes a backlog of N distinct records to a fresh topic (the situation autoscaling reacts to),
starts `twinstream worker` as a real process with one onnxruntime thread per consumer process,
and times how fast the index count grows from the first write to N. Only public interfaces are
used (the CLI, the topic, the index count), so the figure includes everything a worker does:
fetch, decode, embed, thumbnail, pipelined upserts, dead-letter flush and the offset commit.

Each image set is run twice: as found (e.g. 64-px PNG shapes) and re-encoded as 640x480 JPEG,
which is closer to camera or catalogue images and shows what decoding costs. Services are the
ones in TWINSTREAM_KAFKA_BOOTSTRAP / TWINSTREAM_REDIS_URL, or a local stack started here. Writes
a Markdown table to stdout and JSON to bench/results/deploy_worker_rate.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from PIL import Image

from index.store import VectorIndex, connect
from twinstream.files import expand_paths
from twinstream.messages import ImageMessage, content_id, now_ms
from twinstream.runtime import Encoder
from twinstream.settings import Settings, child_env, load_settings
from twinstream.stack import stack_for, with_services
from worker.kafka_io import ensure_topics, make_producer

RESULTS = Path("bench/results/deploy_worker_rate.json")


def as_jpeg(data: bytes, size: tuple[int, int] = (640, 480)) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def publish_backlog(settings: Settings, blobs: list[tuple[str, bytes]], records: int) -> None:
    ensure_topics(settings.kafka)
    producer = make_producer(settings.kafka)
    try:
        for i in range(records):
            label, data = blobs[i % len(blobs)]
            kind = "image/jpeg" if data.startswith(b"\xff\xd8\xff") else "image/png"
            msg = ImageMessage(id=f"{content_id(data)}-{i}", data=data, content_type=kind,
                               attributes={"label": label}, produced_at_ms=now_ms())
            key, value, headers = msg.to_record()
            producer.send(settings.kafka.topic, key=key, value=value, headers=headers)
        producer.flush()
    finally:
        producer.close(timeout=10)


def drain_rate(settings: Settings, model: str, records: int, processes: int,
               timeout_s: float) -> dict:
    """Run `twinstream worker` on the backlog; records/s from the first write to the last."""
    worker_settings = replace(
        settings, kafka=replace(settings.kafka, session_timeout_ms=6000),  # a quick first join
        model=replace(settings.model, path=model, threads=1),
        worker=replace(settings.worker, processes=processes))
    env = child_env(worker_settings, os.environ)
    index = VectorIndex.for_settings(connect(settings.redis.url), settings.redis,
                                     Encoder(model).card)
    worker = subprocess.Popen([sys.executable, "-m", "twinstream", "worker", "-q"], env=env)
    first = last = None
    count = 0
    deadline = time.monotonic() + timeout_s
    try:
        while count < records and time.monotonic() < deadline and worker.poll() is None:
            count = index.count()
            now = time.perf_counter()
            if count and first is None:
                first, first_count = now, count
            last = now
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(30)
    if count < records or first is None or last <= first:
        raise SystemExit(f"worker indexed {count} of {records} records in {timeout_s:.0f}s "
                         f"(exit code {worker.returncode})")
    return {"records": records, "processes": processes,
            "seconds": round(last - first, 2),
            "records_per_s": round((count - first_count) / (last - first), 1)}


def embed_only_rate(model: str, blobs: list[bytes], batch: int, seconds: float = 3.0) -> float:
    """Decode + preprocess + onnxruntime alone, one thread: the ceiling of a worker's rate."""
    encoder = Encoder(model, threads=1)
    chunk = (blobs * (batch // len(blobs) + 1))[:batch]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encoder.embed_bytes(chunk)
        done += len(chunk)
    return round(done / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the .onnx encoder")
    parser.add_argument("--images", required=True, nargs="+", help="image files or folders")
    parser.add_argument("--records", type=int, default=3000, help="backlog size per run")
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="worker processes to try (each is one consumer)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run, at most")
    args = parser.parse_args()

    paths = expand_paths(args.images)[:500]
    if not paths:
        raise SystemExit(f"no images in {' '.join(args.images)}")
    originals = [(p.parent.name, p.read_bytes()) for p in paths]
    sets = {"as found": originals,
            "640x480 JPEG": [(label, as_jpeg(data)) for label, data in originals[:100]]}
    base = load_settings(os.environ)
    rows = []
    with stack_for(base) as stack:
        for name, blobs in sets.items():
            embed_only = embed_only_rate(args.model, [data for _, data in blobs], 32)
            for processes in args.processes:
                run = uuid.uuid4().hex[:8]
                settings = with_services(base, stack)
                settings = replace(
                    settings,
                    kafka=replace(settings.kafka, topic=f"rate-{run}", group=f"rate-{run}",
                                  partitions=max(8, processes)),
                    redis=replace(settings.redis, index=f"rate-{run}"))
                publish_backlog(settings, blobs, args.records)
                row = drain_rate(settings, args.model, args.records, processes, args.timeout)
                row["images"] = name
                row["embed_only_per_s"] = embed_only
                rows.append(row)
                print(f"{name}, {processes} process(es): {row}", file=sys.stderr)

    lines = ["| images | worker processes | records | drain rate (records/s) | "
             "embed-only rate, 1 thread (images/s) |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['images']} | {r['processes']} | {r['records']} | {r['records_per_s']} | "
              f"{r['embed_only_per_s']} |" for r in rows]
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores "
                                              "(shared)", "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
