"""Growth benchmark (not a test): what ingest, queries and re-index cost as the gallery grows.

    nice -n 5 .venv/bin/python bench/growth_bench.py        # 10k -> 100k -> 1M, a quiet machine
    .venv/bin/python bench/growth_bench.py --sizes 2000,5000 --reindex-sizes 2000,5000 \\
        --out /tmp/growth.json                              # a smoke run, a few minutes

One Redis 8 and one broker (``LocalStack``, on loopback), one index grown through ``--sizes``.
The encoder is real: the ``small`` demo architecture trained briefly on coloured shapes (or
``--model``). The gallery is synthetic vectors of that model's dimension (``index_bench``'s
embedding-like clusters), bulk-loaded with the worker's ``VectorIndex.upsert`` into the LIVE index
version of that model, so a real worker writes new images into the same vector set. At each size
N, every row measured (``"estimated": false``), none extrapolated:

1. gallery build: seconds and vectors/s to grow from the previous size to N (pipelined batches
   of 1,000 over ``--connections`` connections), the total so far, and Redis memory: the server's
   ``used_memory`` over the empty server's, and the index's own bytes per vector;
2. query latency: VSIM k=10 at Redis's default ef from one client thread, ``--queries`` queries
   (fresh draws, not indexed): p50/p99, Redis's own p50/p99, and recall@10 against exact search
   over the synthetic gallery (a check that the index at N is sound, not a target);
3. ingest to queryable: a real worker process (``python -m twinstream worker``) on the broker,
   ``--latency-images`` new PNGs published at ``--rate``/s; per image, the time from ``send`` to
   the id answering ``VISMEMBER`` in the live vector set, p50/p99 (``pipeline_bench.latency``);
4. re-index (sizes in ``--reindex-sizes``): the wall time of
   ``twinstream reindex --model B --exit-when-caught-up`` (process start and group join
   included), B being a second model version (the same architecture from a second short training
   with another seed: the version is the hash of the weights, so a re-export of A would not do).
   It re-embeds what is in the topic: N distinct real PNGs, published to a topic of their own
   beforehand (not timed). The gallery's synthetic vectors are NOT in any topic, so this measures
   N records re-embedded and written into an empty new version while version A, with its N
   vectors, sits in the same Redis. Version B and the thumbnails it wrote are dropped afterwards,
   so every size re-indexes into an empty version and the memory of the next size is the
   gallery's. Sizes not in ``--reindex-sizes`` say ``"reindex": null`` with a reason.

Slope: for each quantity and each pair of consecutive sizes, b in cost ~ N^b
(log(cost2 / cost1) / log(N2 / N1)): 1 is linear, 0 flat; the build's b is taken on its total
time to N. The machine may be shared: the load average is recorded at the start and end of every
size. Writes ``--out`` after every size (a stopped run keeps what it measured) and prints a
Markdown table with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from index_bench import (  # noqa: E402
    K,
    bulk_load,
    exact_top_k,
    load_average,
    make_vectors,
    redis_memory,
    server_latency,
    timed_queries,
)
from pipeline_bench import (  # noqa: E402
    environment,
    latency,
    log,
    make_images,
    process_tree,
    rss_mb,
    train_small_model,
)

from index import layout  # noqa: E402
from index.store import VectorIndex, connect  # noqa: E402
from index.versions import drop_version  # noqa: E402
from twinstream.messages import ImageMessage, content_id  # noqa: E402
from twinstream.runtime import Encoder  # noqa: E402
from twinstream.settings import Settings, load_settings  # noqa: E402
from twinstream.stack import LocalStack, with_services  # noqa: E402
from worker.heartbeat import list_workers  # noqa: E402
from worker.kafka_io import ensure_topics, make_producer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "growth.json"
INDEX, LIVE_TOPIC, CORPUS_TOPIC = "growth", "growth", "growth-reindex"
IMAGE_CHUNK = 2000  # images rendered and published at a time (a few MB)


def parse_sizes(text: str) -> list[int]:
    return sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})


# --- the re-index corpus: distinct real images in a topic of their own --------------------------

class Corpus:
    """Distinct PNGs published to ``CORPUS_TOPIC``, grown to each re-index size. Ids are content
    hashes, so every image must differ: ``make_images`` draws position, size, angle and colours
    at random; a repeat (never seen so far) would be skipped and replaced, not counted twice."""

    def __init__(self, settings: Settings):
        self.settings = replace(settings, kafka=replace(settings.kafka, topic=CORPUS_TOPIC))
        self.ids: list[str] = []
        self._seen: set[str] = set()
        self._chunks = 0
        self.publish_s = 0.0

    def grow_to(self, n: int) -> None:
        if n <= len(self.ids):
            return
        ensure_topics(self.settings.kafka)
        producer = make_producer(self.settings.kafka, linger_ms=20)
        began = time.perf_counter()
        with tqdm(total=n - len(self.ids), desc=f"publish corpus to {n:,}", unit="img",
                  unit_scale=True, file=sys.stderr, leave=False) as bar:
            while len(self.ids) < n:
                self._chunks += 1
                for data in make_images(min(IMAGE_CHUNK, n - len(self.ids)),
                                        seed=100_000 + self._chunks):
                    image_id = content_id(data)
                    if image_id in self._seen:
                        continue
                    msg = ImageMessage(id=image_id, data=data, content_type="image/png",
                                       attributes={"label": "growth"})
                    key, value, headers = msg.to_record()
                    producer.send(self.settings.kafka.topic, key=key, value=value,
                                  headers=headers)
                    self._seen.add(image_id)
                    self.ids.append(image_id)
                    bar.update()
            producer.flush(120)
        producer.close(10)
        self.publish_s += time.perf_counter() - began


# --- the measurements at one size ---------------------------------------------------------------

def query_latency(url: str, queries: np.ndarray, truth: np.ndarray) -> dict:
    """One client thread, Redis's default ef. Hits that are real images (hex ids, written by
    the worker) count as misses against the synthetic truth."""
    index = VectorIndex.live(connect(url), INDEX)
    index.client.config_resetstat()  # Redis's VSIM percentiles of this run only

    def search(q: np.ndarray) -> list[int]:
        return [int(h.id) if h.id.isdigit() else -1 for h in index.search(q, k=K)]

    return {**timed_queries([search], queries, truth), **server_latency(index.client)}


def ingest_latency(settings: Settings, images: list[bytes], rate: float) -> dict:
    """``pipeline_bench.latency`` once the previous size's worker has left the group (its
    heartbeat is gone), so the join check cannot pass on a stale worker."""
    client = connect(settings.redis.url)
    deadline = time.monotonic() + 30
    while list_workers(client, settings.kafka.group) and time.monotonic() < deadline:
        time.sleep(0.2)
    return latency(settings, images, rate)


def reindex_time(settings: Settings, model_b: Path, version_b: str, n: int, corpus: Corpus,
                 processes: int, baseline: int, logdir: Path) -> dict:
    """``twinstream reindex --exit-when-caught-up`` over the corpus of ``n`` records, timed from
    the command's start to its exit; the peak RSS of its processes and of Redis's used_memory
    sampled meanwhile, and when version B got its first vector (what comes before is the fixed
    cost of starting: processes, model, group join). Then version B and its thumbnails go."""
    publish_before = corpus.publish_s
    corpus.grow_to(n)
    s = replace(settings, kafka=replace(settings.kafka, topic=CORPUS_TOPIC,
                                        group=f"growth-reindex-{n}"),
                model=replace(settings.model, path=str(model_b)),
                worker=replace(settings.worker, processes=processes))
    client = connect(settings.redis.url)
    out, err = logdir / f"reindex-{n}.json", logdir / f"reindex-{n}.log"
    peak = {"rss_mb": 0.0, "redis": 0}
    shards = layout.shard_keys(INDEX, version_b, settings.redis.shards)
    first_write = None
    deadline_s = 300 + n / 20  # far above any rate seen; a hung re-index fails the run
    with out.open("w") as stdout, err.open("w") as stderr:
        began = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "twinstream", "reindex", "--exit-when-caught-up", "--json",
             "-q"], env=environment(s), cwd=ROOT, stdout=stdout, stderr=stderr)
        while proc.poll() is None:
            peak["rss_mb"] = max(peak["rss_mb"], rss_mb(proc.pid))
            peak["redis"] = max(peak["redis"], int(client.info("memory")["used_memory"]))
            if first_write is None and any(client.execute_command("VCARD", k) for k in shards):
                first_write = time.perf_counter() - began
            if time.perf_counter() - began > deadline_s:
                for pid in reversed(process_tree(proc.pid)):
                    os.kill(pid, 9)
                proc.wait()
                raise RuntimeError(f"re-index of {n:,} records ran past {deadline_s:.0f} s; "
                                   f"see {err}")
            time.sleep(0.25)
        seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"re-index exited {proc.returncode}: {err.read_text()[-2000:]}")
    result = json.loads(out.read_text())
    if not result.get("caught_up") or result.get("count") != n or result.get("records") != n:
        raise RuntimeError(f"re-index of {n:,} records did not write them all: {result}")
    index = VectorIndex.live(client, INDEX)
    drop_version(client, INDEX, result["version"])
    for lo in range(0, len(corpus.ids), 10_000):  # the re-index's thumbnails, kept by name
        index.delete_thumbnails(corpus.ids[lo:lo + 10_000])
    first_write = first_write or seconds
    return {"records": n, "seconds": round(seconds, 2), "records_per_s": round(n / seconds, 1),
            "first_write_s": round(first_write, 2),
            "after_first_write_s": round(seconds - first_write, 2),
            "records_per_s_after_first_write": round(n / max(seconds - first_write, 1e-3), 1),
            "processes": processes or os.cpu_count(), "version": result["version"],
            "peak_rss_mb": round(peak["rss_mb"], 1),
            "peak_redis_used_memory_bytes": peak["redis"] - baseline,
            "corpus_publish_s": round(corpus.publish_s - publish_before, 1)}


# --- slopes and the table -----------------------------------------------------------------------

def _get(row: dict, *path: str) -> float | None:
    for key in path:
        if not isinstance(row, dict) or row.get(key) is None:
            return None
        row = row[key]
    return float(row)


QUANTITIES = {  # name: where it is in a row
    "build_total_s": ("build", "total_s"),
    "used_memory_bytes": ("memory", "used_memory_bytes"),
    "query_p50_ms": ("query", "p50_ms"),
    "query_p99_ms": ("query", "p99_ms"),
    "ingest_p50_ms": ("ingest_to_queryable", "p50_ms"),
    "ingest_p99_ms": ("ingest_to_queryable", "p99_ms"),
    "reindex_s": ("reindex", "seconds"),
    "reindex_after_first_write_s": ("reindex", "after_first_write_s"),
}


def slopes(rows: list[dict]) -> list[dict]:
    """b in cost ~ N^b between consecutive sizes, per quantity (None where one side is
    missing or not positive)."""
    out = []
    for a, b in itertools.pairwise(rows):
        span = math.log(b["n"] / a["n"])
        exps = {}
        for name, path in QUANTITIES.items():
            x, y = _get(a, *path), _get(b, *path)
            exps[name] = round(math.log(y / x) / span, 3) if x and y and x > 0 and y > 0 \
                else None
        out.append({"from": a["n"], "to": b["n"], "b": exps})
    return out


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def table(result: dict) -> str:
    lines = ["| N | build total s | step vec/s | Redis MB | B/vector | query p50 ms | "
             "query p99 ms | recall@10 | ingest→queryable p50 ms | ingest→queryable p99 ms | "
             "re-index s | of which start s | re-index rec/s | load avg |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | --- |"]
    for r in result["rows"]:
        rx = r["reindex"] or {}
        lines.append(
            f"| {r['n']:,} | {r['build']['total_s']:.1f} | {r['build']['vectors_per_s']:,.0f} "
            f"| {r['memory']['used_memory_bytes'] / 1e6:,.1f} "
            f"| {r['memory']['bytes_per_vector']:,.0f} | {r['query']['p50_ms']:.2f} "
            f"| {r['query']['p99_ms']:.2f} | {r['query']['recall@10']:.3f} "
            f"| {r['ingest_to_queryable']['p50_ms']:.0f} "
            f"| {r['ingest_to_queryable']['p99_ms']:.0f} | {_f(rx.get('seconds'), '.1f')} "
            f"| {_f(rx.get('first_write_s'), '.1f')} | {_f(rx.get('records_per_s'), ',.0f')} "
            f"| {r['load_average_start'][0]:.1f} → {r['load_average_end'][0]:.1f} |")
    for s in result["slopes"]:
        b = s["b"]
        lines.append(
            f"| b, {s['from']:,}→{s['to']:,} | {_f(b['build_total_s'])} | | "
            f"{_f(b['used_memory_bytes'])} | | {_f(b['query_p50_ms'])} | {_f(b['query_p99_ms'])} "
            f"| | {_f(b['ingest_p50_ms'])} | {_f(b['ingest_p99_ms'])} | {_f(b['reindex_s'])} "
            f"| (after start: {_f(b['reindex_after_first_write_s'])}) | | |")
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------------

def models(args, workdir: Path) -> tuple[Path, Path]:
    a = Path(args.model) if args.model else None
    b = Path(args.reindex_model) if args.reindex_model else None
    if a is None:
        log(f"training the small encoder, seed 0 ({args.train_seconds:.0f} s budget)")
        a = train_small_model(workdir / "model-a", args.train_seconds, seed=0)
    if b is None and args.reindex_sizes:
        log(f"training the re-index encoder, seed 1 ({args.train_seconds:.0f} s budget)")
        b = train_small_model(workdir / "model-b", args.train_seconds, seed=1)
    return a, b


def live_settings(stack: LocalStack, model: Path) -> Settings:
    """Settings of the live worker: the stack's services, the live model, topic and index."""
    s = with_services(load_settings({}), stack)
    return replace(s, model=replace(s.model, path=str(model)),
                   kafka=replace(s.kafka, topic=LIVE_TOPIC, group="growth"),
                   redis=replace(s.redis, index=INDEX))


def reindex_only(args) -> int:
    """The re-index of ``args.reindex_only`` records on a fresh stack, written into the existing
    results' row of that size. The live version beside it is empty here (in the full run it
    holds the gallery): the re-index writes into a version of its own either way, so the time
    is the same work; the row says it was measured apart."""
    n = args.reindex_only
    out = Path(args.out)
    result = json.loads(out.read_text())
    row = next((r for r in result["rows"] if r["n"] == n), None)
    if row is None:
        print(f"error: {out} has no row for {n:,}; run the sizes first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="growth-reindex-") as tmp:
        workdir = Path(tmp)
        args.reindex_sizes = str(n)
        model_a, model_b = models(args, workdir)
        card, version_b = Encoder(model_a, threads=1).card, Encoder(model_b, threads=1).card.version
        with LocalStack(workdir=workdir / "stack") as stack:
            s = live_settings(stack, model_a)
            client = connect(stack.redis_url)
            baseline = int(client.info("memory")["used_memory"])
            VectorIndex.for_settings(client, s.redis, card)  # version A live, empty
            load_start = load_average()
            log(f"re-index of {n:,} records (a run of its own)")
            reindex = reindex_time(s, model_b, version_b, n, Corpus(s),
                                   args.reindex_processes, baseline, workdir)
    row["reindex"] = reindex | {"separate_run": True, "live_version_vectors": 0,
                                "load_average_start": load_start,
                                "load_average_end": load_average()}
    row.pop("reason", None)
    result["reindex_only_command"] = shlex.join(
        ["nice", "-n", "5", ".venv/bin/python", "bench/growth_bench.py", *sys.argv[1:]])
    result["slopes"] = slopes(result["rows"])
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"re-index of {n:,}: {reindex['seconds']:.1f} s ({reindex['records_per_s']:.0f} "
        f"records/s); written into {out}")
    print(table(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="gallery sizes, comma-separated; every one measured")
    parser.add_argument("--reindex-sizes", default="10000,100000",
                        help="sizes (of --sizes) at which the re-index is measured; "
                             "empty: none")
    parser.add_argument("--model", help="the live encoder, an exported .onnx (none: train "
                                        "`small` for --train-seconds)")
    parser.add_argument("--reindex-model", help="the re-index encoder: another version of "
                                                "--model's architecture (none: train one)")
    parser.add_argument("--train-seconds", type=float, default=30,
                        help="training budget of each model trained here")
    parser.add_argument("--queries", type=int, default=1000, help="queries per size")
    parser.add_argument("--latency-images", type=int, default=300,
                        help="new images published per size for ingest -> queryable")
    parser.add_argument("--rate", type=float, default=100,
                        help="images/s they are published at (steady, moderate)")
    parser.add_argument("--connections", type=int, default=4,
                        help="client connections the gallery's bulk load is spread over")
    parser.add_argument("--reindex-processes", type=int, default=0,
                        help="re-index worker processes; 0 = one per CPU core")
    parser.add_argument("--out", default=str(RESULTS),
                        help="results JSON, written after every size")
    parser.add_argument("--reindex-only", type=int, metavar="N",
                        help="measure only the re-index of N records, in a run of its own, "
                             "into --out's existing row for N (for the largest size, where "
                             "growing the gallery and re-indexing in one run takes an hour)")
    args = parser.parse_args()
    if args.reindex_only:
        return reindex_only(args)
    sizes, reindex_sizes = parse_sizes(args.sizes), parse_sizes(args.reindex_sizes)
    if not sizes or sizes[0] < 1:
        parser.error("--sizes needs positive sizes")
    if set(reindex_sizes) - set(sizes):
        parser.error(f"--reindex-sizes {sorted(set(reindex_sizes) - set(sizes))} are not in "
                     "--sizes")
    command = shlex.join(["nice", "-n", "5", ".venv/bin/python", "bench/growth_bench.py",
                          *sys.argv[1:]])

    with tempfile.TemporaryDirectory(prefix="growth-bench-") as tmp:
        workdir = Path(tmp)
        model_a, model_b = models(args, workdir)
        card = Encoder(model_a, threads=1).card
        version_b = None
        if model_b is not None:
            card_b = Encoder(model_b, threads=1).card
            version_b = card_b.version
            if card_b.version == card.version or card_b.embedding_dim != card.embedding_dim:
                parser.error(f"the re-index model must be another version of the same "
                             f"dimension: {card.version}/{card.embedding_dim} vs "
                             f"{card_b.version}/{card_b.embedding_dim}")
        dim = card.embedding_dim
        log(f"model {card.version} ({card.architecture.get('arch', '?')}, dim {dim}); "
            f"{sizes[-1]:,} gallery vectors")
        data = make_vectors(sizes[-1], dim, seed=1)
        query_vectors = make_vectors(args.queries, dim, seed=2)
        result: dict = {
            "command": command, "sizes": sizes, "reindex_sizes": reindex_sizes, "k": K,
            "queries": args.queries, "latency_images": args.latency_images,
            "rate_per_s": args.rate, "connections": args.connections,
            "model": {"arch": card.architecture.get("arch", "?"), "version": card.version,
                      "dim": dim, "input": list(card.preprocessing.shape)},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "rows": [], "slopes": []}

        def save() -> None:
            result["slopes"] = slopes(result["rows"])
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

        with LocalStack(workdir=workdir / "stack") as stack:
            s = live_settings(stack, model_a)
            client = connect(stack.redis_url)
            result["machine"]["redis"] = client.info("server")["redis_version"]
            baseline = int(client.info("memory")["used_memory"])
            index = VectorIndex.for_settings(client, s.redis, card)  # live: the first version
            corpus = Corpus(s)
            done, total_s = 0, 0.0
            for i, n in enumerate(sizes):
                row: dict = {"n": n, "estimated": False, "load_average_start": load_average()}
                log(f"gallery {done:,} -> {n:,}")
                began = time.perf_counter()
                bulk_load(stack.redis_url, INDEX, data, done, n, args.connections,
                          f"load to {n:,}")
                step = time.perf_counter() - began
                total_s += step
                row["build"] = {"from": done, "step_s": round(step, 2), "total_s":
                                round(total_s, 2), "vectors_per_s": round((n - done) / step, 1)}
                done = n
                row["memory"] = redis_memory(index, baseline)
                row["index_count"] = index.count()  # N plus the real images of earlier sizes

                log(f"queries at {n:,}")
                truth = exact_top_k(data[:n], query_vectors)
                row["query"] = query_latency(stack.redis_url, query_vectors, truth)

                log(f"ingest -> queryable at {n:,}: {args.latency_images} images at "
                    f"{args.rate:.0f}/s")
                row["ingest_to_queryable"] = ingest_latency(
                    s, make_images(args.latency_images, seed=1000 + i), args.rate)

                if n in reindex_sizes:
                    log(f"re-index of {n:,} records")
                    row["reindex"] = reindex_time(s, model_b, version_b, n, corpus,
                                                  args.reindex_processes, baseline, workdir)
                else:
                    row["reindex"] = None
                    row["reason"] = (f"re-index not measured at {n:,}: not in --reindex-sizes "
                                     "(it needs N real images published and re-embedded)")
                row["load_average_end"] = load_average()
                result["rows"].append(row)
                save()
                rx = row["reindex"]
                log(f"at {n:,}: build {step:.1f} s, query p50 {row['query']['p50_ms']:.2f} ms, "
                    f"ingest p50 {row['ingest_to_queryable']['p50_ms']:.0f} ms"
                    + (f", re-index {rx['seconds']:.1f} s" if rx else ""))

    print(f"### Growth: {', '.join(f'{n:,}' for n in sizes)} vectors x {dim} "
          f"(model {card.version}), k={K}, {args.queries} queries, ingest at {args.rate:.0f}/s; "
          f"{os.cpu_count()} cores\n")
    print(table(result))
    print("\nb: cost ~ N^b between the two sizes (build: its total time to N). Reproduce with:\n")
    print(f"    {command}")
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
