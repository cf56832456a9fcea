"""Index benchmark (not a test): upsert rate, query latency and QPS, recall@10, memory per vector.

    nice -n 5 .venv/bin/python bench/index_bench.py            # 100,000 x 128, ~10 minutes
    .venv/bin/python bench/index_bench.py --n 20000 --quick     # a smoke run

Data: clustered unit vectors shaped like real embeddings, not uniform noise: 1,000 clusters of
Zipf-distributed sizes (imbalanced classes) with varying spreads, living mostly in a 48-dimensional
subspace of the 128 dimensions, plus a little isotropic noise. Queries are fresh draws from the same
distribution (not indexed). Recall@10 is measured against exact numpy search.

Every configuration runs on the same fresh Redis 8 server (and, for the cluster row, a local
3-master Redis Cluster from the same binary), one after the other, so the ratios printed at the
end are measured side by side. The machine is shared: absolute numbers are noisy; ratios less so.
Writes a Markdown table to stdout and the raw numbers to bench/results/index_bench.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index.connection import is_cluster  # noqa: E402
from index.store import VectorIndex, connect  # noqa: E402
from twinstream.modelcard import ModelCard  # noqa: E402
from twinstream.preprocess import Preprocessing  # noqa: E402
from twinstream.redis_cluster import LocalRedisCluster  # noqa: E402
from twinstream.stack import redis_process  # noqa: E402

K = 10
BATCH = 1000


def make_vectors(n: int, dim: int, seed: int, clusters: int = 1000, rank: int = 48
                 ) -> np.ndarray:
    """``n`` embedding-like unit vectors (see the module docstring); deterministic per seed."""
    rng = np.random.default_rng(1234)  # the same clusters for data and queries
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0]  # an orthonormal 48-d subspace
    centres = rng.normal(size=(clusters, rank))
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    spreads = rng.uniform(0.25, 0.6, size=clusters)
    draw = np.random.default_rng(seed)
    which = draw.choice(clusters, size=n, p=weights / weights.sum())
    local = centres[which] / np.linalg.norm(centres[which], axis=1, keepdims=True)
    local += draw.normal(size=(n, rank)) * (spreads[which, None] / math.sqrt(rank))
    x = local @ basis.T + draw.normal(size=(n, dim)) * (0.05 / math.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 200):
        scores = queries[start:start + 200] @ data.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start:start + 200] = np.take_along_axis(top, order, axis=1)
    return out


def card(dim: int) -> ModelCard:
    return ModelCard(embedding_dim=dim, preprocessing=Preprocessing(), version="bench")


def fill(index: VectorIndex, data: np.ndarray, start: int, stop: int, desc: str) -> float:
    """Upsert rows start..stop in pipelined batches; returns vectors per second."""
    began = time.perf_counter()
    for lo in tqdm(range(start, stop, BATCH), desc=desc, unit="batch", file=sys.stderr,
                   leave=False):
        hi = min(lo + BATCH, stop)
        index.upsert([(str(i), data[i], {"label": f"c{i % 1000}", "source": f"cam{i % 4}"})
                      for i in range(lo, hi)])
    return (stop - start) / (time.perf_counter() - began)


def run_queries(url: str, name: str, queries: np.ndarray, truth: np.ndarray, threads: int,
                ef: int | None) -> dict:
    """Recall@10, latency percentiles and QPS with ``threads`` clients (one connection each)."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    found = [0] * threads
    chunks = np.array_split(np.arange(len(queries)), threads)
    indexes = [VectorIndex.live(connect(url), name) for _ in range(threads)]
    for index in indexes:  # warm the connections
        index.search(queries[0], k=K, ef=ef)
    server = indexes[0].client
    if not is_cluster(server):
        server.config_resetstat()  # server-side VSIM percentiles of this run only

    def worker(t: int) -> None:
        for i in chunks[t]:
            began = time.perf_counter()
            hits = indexes[t].search(queries[i], k=K, ef=ef)
            latencies[t].append(time.perf_counter() - began)
            found[t] += len({int(h.id) for h in hits} & set(truth[i].tolist()))

    began = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall = time.perf_counter() - began
    flat = np.array([x for lat in latencies for x in lat]) * 1000
    return {"threads": threads, "ef": ef, "recall@10": sum(found) / (K * len(queries)),
            "p50_ms": float(np.percentile(flat, 50)), "p99_ms": float(np.percentile(flat, 99)),
            "qps": len(queries) / wall, **server_latency(server)}


def server_latency(client) -> dict:
    """Redis's own VSIM percentiles (time inside the server, threads included): what is left
    of the client's latency is the network, redis-py, and waiting for a core."""
    if is_cluster(client):
        return {}
    stats = client.info("latencystats").get("latency_percentiles_usec_VSIM", {})
    return {"server_p50_ms": stats.get("p50", 0) / 1000, "server_p99_ms": stats.get("p99", 0)
            / 1000} if stats else {}


def memory_per_vector(index: VectorIndex) -> float:
    used = sum(int(index.client.memory_usage(key, samples=0) or 0) for key in index.keys)
    return used / max(index.count(), 1)


def bench_config(label: str, url: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                 quant: str, shards: int, efs: tuple, checkpoints: tuple = ()) -> dict:
    client = connect(url)
    name = f"bench-{quant}-{shards}"
    index = VectorIndex.for_model(client, name, card(data.shape[1]), quant, shards=shards)
    row: dict = {"config": label, "quant": quant, "shards": shards, "n": len(data),
                 "growth": []}
    done, seconds = 0, 0.0
    for stop in (*checkpoints, len(data)):
        rate = fill(index, data, done, stop, f"{label} upsert to {stop:,}")
        seconds += (stop - done) / rate
        done = stop
        if stop != len(data):  # a growth point: latency and memory on the way up
            sub_truth = exact_top_k(data[:stop], queries)
            point = run_queries(url, name, queries, sub_truth, 1, None)
            row["growth"].append({"n": stop, **point, "bytes_per_vector":
                                  memory_per_vector(index)})
    row["upsert_per_s"] = len(data) / seconds
    row["bytes_per_vector"] = memory_per_vector(index)
    row["runs"] = [run_queries(url, name, queries, truth, threads, ef)
                   for ef in efs for threads in (1, 4)]
    last = next(r for r in row["runs"] if r["ef"] is None and r["threads"] == 1)
    row["growth"].append({"n": len(data), **last, "bytes_per_vector": row["bytes_per_vector"]})
    client.flushall()  # the next configuration starts from an empty server
    return row


def estimate_million(growth: list[dict]) -> dict:
    """Latency grows ~log N for HNSW and memory ~N: fit both on the measured points."""
    log_n = np.log([g["n"] for g in growth])

    def extrapolate(key: str) -> float:
        values = [g[key] for g in growth]
        slope, _ = np.polyfit(log_n, values, 1)
        # Noise on a shared machine can make the fitted slope negative; latency does not shrink.
        return float(values[-1] + max(slope, 0.0) * (math.log(1e6) - log_n[-1]))

    return {"n": 1_000_000, "estimated": True,
            "p50_ms": extrapolate("p50_ms"), "p99_ms": extrapolate("p99_ms"),
            "server_p99_ms": extrapolate("server_p99_ms"),
            "bytes_per_vector": float(growth[-1]["bytes_per_vector"]),
            "memory_gb": float(growth[-1]["bytes_per_vector"] * 1e6 / 1e9)}


def table(rows: list[dict]) -> str:
    lines = ["| config | N | upsert/s | ef | recall@10 | p50 ms (1 thr) | p99 ms (1 thr) | "
             "server p99 ms | QPS 1 thr | QPS 4 thr | p99 ms (4 thr) | bytes/vector |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        for ef in dict.fromkeys(r["ef"] for r in row["runs"]):
            one = next(r for r in row["runs"] if r["ef"] == ef and r["threads"] == 1)
            four = next(r for r in row["runs"] if r["ef"] == ef and r["threads"] == 4)
            lines.append(
                f"| {row['config']} | {row['n']:,} | {row['upsert_per_s']:,.0f} | "
                f"{ef or 'default'} | {one['recall@10']:.3f} | {one['p50_ms']:.2f} | "
                f"{one['p99_ms']:.2f} | {_ms(one.get('server_p99_ms'))} | {one['qps']:,.0f} | "
                f"{four['qps']:,.0f} | "
                f"{four['p99_ms']:.2f} | {row['bytes_per_vector']:,.0f} |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def growth_table(growth: list[dict], million: dict) -> str:
    lines = ["| N | recall@10 | p50 ms | p99 ms | server p99 ms | bytes/vector | memory |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g in growth:
        lines.append(f"| {g['n']:,} | {g['recall@10']:.3f} | {g['p50_ms']:.2f} | "
                     f"{g['p99_ms']:.2f} | {_ms(g.get('server_p99_ms'))} | "
                     f"{g['bytes_per_vector']:,.0f} | "
                     f"{g['bytes_per_vector'] * g['n'] / 1e6:,.1f} MB |")
    lines.append(f"| 1,000,000 (estimated) | n/a | {million['p50_ms']:.2f} | "
                 f"{million['p99_ms']:.2f} | {_ms(million['server_p99_ms'])} | "
                 f"{million['bytes_per_vector']:,.0f} | "
                 f"{million['memory_gb'] * 1000:,.0f} MB |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    by = {r["config"]: r for r in rows}

    def first(row, threads=1):
        return next(r for r in row["runs"] if r["ef"] is None and r["threads"] == threads)

    q8, out = by["Q8, 1 shard"], {}
    if "NOQUANT, 1 shard" in by:
        f32 = by["NOQUANT, 1 shard"]
        out["memory NOQUANT / Q8"] = f32["bytes_per_vector"] / q8["bytes_per_vector"]
        out["recall NOQUANT - Q8"] = first(f32)["recall@10"] - first(q8)["recall@10"]
        out["p50 NOQUANT / Q8"] = first(f32)["p50_ms"] / first(q8)["p50_ms"]
    if "BIN, 1 shard" in by:
        out["memory BIN / Q8"] = by["BIN, 1 shard"]["bytes_per_vector"] / q8["bytes_per_vector"]
        out["recall BIN - Q8"] = first(by["BIN, 1 shard"])["recall@10"] - first(q8)["recall@10"]
    if "Q8, 4 shards" in by:
        four = by["Q8, 4 shards"]
        out["p50 4 shards / 1 shard"] = first(four)["p50_ms"] / first(q8)["p50_ms"]
        out["upsert 4 shards / 1 shard"] = four["upsert_per_s"] / q8["upsert_per_s"]
    out["QPS 4 threads / 1 thread (Q8)"] = first(q8, 4)["qps"] / first(q8)["qps"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="Q8 and NOQUANT only, no cluster")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "index_bench.json"))
    args = parser.parse_args()

    data = make_vectors(args.n, args.dim, seed=1)
    queries = make_vectors(args.queries, args.dim, seed=2)
    truth = exact_top_k(data, queries)
    checkpoints = tuple(c for c in (10_000, 30_000) if c < args.n)
    workdir = Path(tempfile.mkdtemp(prefix="twinstream-bench-"))
    server = redis_process(workdir).start()
    url = f"redis://127.0.0.1:{server.port}/0"
    rows = []
    try:
        rows.append(bench_config("Q8, 1 shard", url, data, queries, truth, "q8", 1,
                                 (None, 50, 200, 400), checkpoints))
        rows.append(bench_config("NOQUANT, 1 shard", url, data, queries, truth, "noquant", 1,
                                 (None,)))
        if not args.quick:
            rows.append(bench_config("BIN, 1 shard", url, data, queries, truth, "bin", 1,
                                     (None, 400)))
            rows.append(bench_config("Q8, 4 shards", url, data, queries, truth, "q8", 4,
                                     (None,)))
        if not (args.quick or args.skip_cluster):
            with LocalRedisCluster(workdir / "cluster", masters=3) as cluster:
                rows.append(bench_config("Q8, 4 shards, 3-master cluster", cluster.url, data,
                                         queries, truth, "q8", 4, (None,)))
    finally:
        server.stop()

    growth = rows[0]["growth"]
    million = estimate_million(growth)
    result = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": K,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "rows": rows, "million": million, "ratios": ratios(rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"### Index benchmark: {args.n:,} vectors x {args.dim}, k={K}, {args.queries} queries "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, shared)\n")
    print(table(rows))
    print("\n### Growth (Q8, 1 shard, default ef; 1M estimated from the measured trend: "
          "latency ~ log N, memory ~ N)\n")
    print(growth_table(growth, million))
    print("\n### Ratios measured side by side in this run\n")
    for key, value in result["ratios"].items():
        print(f"- {key}: {value:+.3f}" if " - " in key else f"- {key}: {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
