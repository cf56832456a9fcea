"""Chaos soak of the streaming pipeline (issue 14): bounded, real services, real crashes.

Two worker processes consume a stream of images with hostile records mixed in, while:
- a random worker is SIGKILLed every few seconds (and started again a second later, as a
  supervisor would);
- Redis (AOF ``everysec``) is SIGKILLed once and restarted on the same files;
- the broker (tansu on its ``s3://`` engine over the local S3 stand-in) is SIGKILLed once and
  restarted.
At the end the index must hold exactly the published good ids, the dead-letter topic exactly the
bad ones, and the group's committed offsets must cover every record (none skipped): each record
below them is in the index or among the dead letters. Prints the counts and, for each fault, the
time until everything published before it was finished; writes ``bench/results/chaos.json``.

    nice -n 5 .venv/bin/python bench/chaos.py --images 20000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from kafka import TopicPartition
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index.store import VectorIndex, connect  # noqa: E402
from twinstream.messages import ImageMessage, content_id  # noqa: E402
from twinstream.settings import child_env, load_settings  # noqa: E402
from twinstream.stack import LocalStack, with_services  # noqa: E402
from twinstream.supervise import die_with_parent  # noqa: E402
from worker.kafka_io import ensure_topics, make_admin, make_producer  # noqa: E402
from worker.topics import group_offsets, read_all  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "chaos.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train_tiny_model(workdir: Path) -> Path:
    from export.onnx_export import export_onnx
    from training.shapes import generate_shapes
    from training.train import TrainConfig, train

    data = workdir / "shapes"
    generate_shapes(data, per_class=20, seed=1)
    result = train(TrainConfig(data=str(data), out=str(workdir / "run"), arch="tiny",
                               embedding_dim=32, image_size=32, epochs=2, seed=0,
                               split="images", test_fraction=0.0, threads=1),
                   log=lambda _m: None)
    out = workdir / "tiny.onnx"
    export_onnx(result.checkpoint, out, [p.read_bytes() for p in sorted(data.rglob("*.png"))[:8]])
    return out


def records(n: int, bad_every: int, seed: int) -> tuple[list[tuple], set[str], set[str]]:
    """``n`` records: distinct 16-px PNGs, every ``bad_every``-th one hostile instead."""
    rng = np.random.default_rng(seed)
    out, good, bad = [], set(), set()
    for i in range(n):
        if i % bad_every == bad_every - 1:
            key = f"bad-{i}"
            value = [rng.bytes(300), b"\x89PNG\r\n\x1a\n" + rng.bytes(40), b"just text"][i % 3]
            out.append((key.encode(), value, [("content-type", b"image/png")]))
            bad.add(key)
            continue
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
        out.append(ImageMessage(id=content_id(data), data=data,
                                content_type="image/png").to_record())
        good.add(content_id(data))
    return out, good, bad


class Publisher(threading.Thread):
    """Publishes at ``rate``/s in chunks; a chunk the broker did not take is sent again."""

    def __init__(self, settings, items: list[tuple], rate: float):
        super().__init__(daemon=True)
        self.settings, self.items, self.rate = settings, items, rate
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # One chunk a second, sent together: the broker stores a batch per request and
            # partition, and its s3 engine reads them back one object at a time (see README).
            producer = make_producer(self.settings.kafka, linger_ms=50)
            start, chunk = time.monotonic(), max(1, int(self.rate))
            while self.done < len(self.items):
                batch = self.items[self.done:self.done + chunk]
                futures = [producer.send(self.settings.kafka.topic, key=k, value=v, headers=h)
                           for k, v, h in batch]
                producer.flush(60)
                failed = [f for f in futures if f.failed() or not f.is_done]
                if failed:  # the broker is down: try the whole chunk again (idempotent ids)
                    time.sleep(1)
                    continue
                self.done += len(batch)
                pause = start + self.done / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            producer.close(10)
        except BaseException as exc:  # reported by main
            self.error = exc


def worker(settings) -> subprocess.Popen:
    """A ``twinstream worker`` in its own process group that dies with this script."""
    return subprocess.Popen([sys.executable, "-m", "twinstream", "worker", "-q",
                             "--processes", "1"],
                            env=child_env(settings, os.environ), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lambda: die_with_parent())


def indexed(settings) -> int:
    try:
        return VectorIndex.live(connect(settings.redis.url), settings.redis.index).count()
    except Exception:  # Redis down, or the index not created yet
        return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=250, help="records published per second")
    parser.add_argument("--bad-every", type=int, default=50, help="one hostile record in N")
    parser.add_argument("--kill-every", type=float, default=15.0,
                        help="mean seconds between worker SIGKILLs (a killed worker's partitions "
                             "move after the 6 s session timeout)")
    parser.add_argument("--faults", default="workers,redis,broker",
                        help="which faults to inject (comma-separated subset)")
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    random.seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = Path(tmp)
        log("training a tiny encoder")
        model = train_tiny_model(workdir)
        items, good, bad = records(args.images, args.bad_every, args.seed)
        log(f"{len(good):,} good and {len(bad):,} hostile records")
        with LocalStack(data_dir=workdir / "data") as stack:
            report = soak(stack, model, items, good, bad, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {args.out}")
    if report["lost"] or report["extra"] or report["dead_letters_missing"] \
            or report["skipped"]:
        sys.exit(1)


def soak(stack, model: Path, items, good: set[str], bad: set[str], args) -> dict:
    s = with_services(load_settings({}), stack)
    s = replace(s, model=replace(s.model, path=str(model)),
                kafka=replace(s.kafka, topic="chaos", group="chaos", partitions=4,
                              session_timeout_ms=6000),
                redis=replace(s.redis, index="chaos"),
                worker=replace(s.worker, shutdown_timeout_s=10.0))
    ensure_topics(s.kafka)
    workers = [worker(s), worker(s)]
    try:
        return _run(s, stack, workers, items, good, bad, args)
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def _run(s, stack, workers, items, good: set[str], bad: set[str], args) -> dict:
    publisher = Publisher(s, items, args.rate)
    started = time.monotonic()
    publisher.start()
    publish_s = len(items) / args.rate
    faults: list[dict] = []
    next_log = started
    pending: list[dict] = []  # faults whose drain is not measured yet
    chosen = set(args.faults.split(","))
    redis_at = 0.4 * publish_s if "redis" in chosen else 0
    broker_at = 0.7 * publish_s if "broker" in chosen else 0
    next_kill = started + random.expovariate(1 / args.kill_every) if "workers" in chosen \
        else float("inf")
    kills = 0

    def fault(kind: str) -> dict:
        done = publisher.done
        entry = {"fault": kind, "at_s": round(time.monotonic() - started, 1),
                 "published": done, "good_before": sum(
                     1 for k, _, _ in items[:done] if not k.startswith(b"bad-"))}
        faults.append(entry)
        pending.append(entry)
        return entry

    while publisher.is_alive() or pending:
        now = time.monotonic()
        if publisher.is_alive() and now >= next_kill:
            victim = random.randrange(len(workers))
            os.killpg(workers[victim].pid, signal.SIGKILL)
            workers[victim].wait(10)
            kills += 1
            log(fault(f"worker {victim} SIGKILL")["fault"])
            time.sleep(1.0)
            workers[victim] = worker(s)
            next_kill = time.monotonic() + random.expovariate(1 / args.kill_every)
        elif redis_at and now - started >= redis_at:
            redis_at = 0
            log(fault("Redis SIGKILL (AOF everysec), restart on its files")["fault"])
            stack.redis.kill()
            time.sleep(3)
            stack.redis.start()
        elif broker_at and now - started >= broker_at:
            broker_at = 0
            log(fault("broker SIGKILL, restart on its S3 storage")["fault"])
            stack.broker.kill()
            time.sleep(5)
            stack.broker.start()
        count = indexed(s)
        if now >= next_log:
            log(f"published {publisher.done:,}/{len(items):,}, indexed {count:,}, "
                f"faults {len(faults)} ({len(pending)} draining)")
            next_log = now + 10
        for entry in list(pending):
            if count >= entry["good_before"]:
                entry["drain_s"] = round(time.monotonic() - started - entry["at_s"], 1)
                pending.remove(entry)
        for i, proc in enumerate(workers):
            if proc.poll() is not None:  # a worker that exited by itself: restart it too
                log(f"worker {i} exited with {proc.returncode}; starting it again")
                workers[i] = worker(s)
        if time.monotonic() - started > publish_s + args.drain_timeout:
            raise SystemExit(f"not drained after {args.drain_timeout:.0f} s: "
                             f"{indexed(s)}/{len(good)} indexed")
        time.sleep(0.1)
    if publisher.error is not None:
        raise SystemExit(f"publisher failed: {publisher.error}")
    log(f"published everything; {kills} worker kills; waiting for the drain")
    deadline = time.monotonic() + args.drain_timeout
    while indexed(s) < len(good) or _committed(s) < len(items):
        if time.monotonic() > deadline:
            raise SystemExit("not drained in time")
        time.sleep(0.5)
    drained_s = round(time.monotonic() - started, 1)
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        proc.wait(60)
    return verify(s, good, bad, faults, kills, drained_s, len(items))


def _committed(settings) -> int:
    admin = make_admin(settings.kafka)
    try:
        return sum(group_offsets(admin, settings.kafka.group).values())
    finally:
        admin.close()


def verify(s, good: set[str], bad: set[str], faults, kills, drained_s, published) -> dict:
    index = VectorIndex.live(connect(s.redis.url), s.redis.index)
    present = {i for i in good if index.exists(i)}
    letters = [r.key.decode() for r in read_all(s.kafka, s.kafka.dlq_topic)]
    admin = make_admin(s.kafka)
    try:
        offsets = group_offsets(admin, s.kafka.group)
    finally:
        admin.close()
    skipped = 0
    for record in read_all(s.kafka, s.kafka.topic):
        if record.offset >= offsets.get(TopicPartition(record.topic, record.partition), 0):
            skipped += 1  # not committed at the end: counted as not done
            continue
        key = record.key.decode()
        if key in bad:
            skipped += key not in letters
        else:
            skipped += not index.exists(key)
    return {"published": published, "good": len(good), "bad": len(bad),
            "indexed": index.count(), "lost": len(good - present),
            "extra": index.count() - len(present),
            "dead_letters": len(letters), "dead_letters_distinct": len(set(letters)),
            "dead_letters_missing": len(bad - set(letters)),
            "dead_letters_unexpected": len(set(letters) - bad),
            "committed": sum(offsets.values()), "skipped": skipped,
            "worker_kills": kills, "drained_after_s": drained_s, "faults": faults,
            "machine": {"cpus": os.cpu_count(), "note": "shared machine"}}


def table(r: dict) -> str:
    lines = ["| fault | at (s) | records published then | drained after (s) |",
             "| --- | ---: | ---: | ---: |"]
    for f in r["faults"]:
        lines.append(f"| {f['fault']} | {f['at_s']} | {f['published']:,} | "
                     f"{f.get('drain_s', '-')} |")
    lines.append("")
    lines.append(f"published {r['published']:,} ({r['good']:,} good, {r['bad']:,} hostile); "
                 f"indexed {r['indexed']:,} (lost {r['lost']}, extra {r['extra']}); dead "
                 f"letters {r['dead_letters']:,} ({r['dead_letters_distinct']:,} distinct, "
                 f"missing {r['dead_letters_missing']}, unexpected "
                 f"{r['dead_letters_unexpected']}); committed {r['committed']:,}, skipped "
                 f"{r['skipped']}; {r['worker_kills']} worker SIGKILLs; all done after "
                 f"{r['drained_after_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
