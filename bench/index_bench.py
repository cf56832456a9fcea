"""Index benchmark (not a test): the index as it grows to a million vectors, beside in-process HNSW.

    nice -n 5 .venv/bin/python bench/index_bench.py --sizes 10000,100000,1000000   # ~45 minutes
    nice -n 5 .venv/bin/python bench/index_bench.py --configs q8,noquant,bin,q8x4,cluster
    .venv/bin/python bench/index_bench.py --sizes 5000,20000 --out /tmp/smoke.json  # a smoke run

Every size is measured, none estimated: each configuration is one index grown through the sizes
(the first N vectors of the same data), and at each size it is measured as it stands: recall@10
against exact numpy search on the queries, client latency p50/p99 and QPS with 1 and 4 client
threads (one connection each), Redis's own VSIM percentiles, and memory (the index's keys per
vector, and the server's ``used_memory`` over the empty server's). The bulk load is pipelined
batches of 1,000 upserts (the worker's ``VectorIndex.upsert``) spread over ``--connections``
client connections; its rate is reported per step of the growth.

Beside each Redis configuration, in the same run, the same vectors go into faiss's HNSW in this
process with the same graph parameters (M = 16, 32 links on layer 0, build ef 200, the same
search ef): ``faiss SQ8`` (8-bit scalar quantization, beside Redis Q8) and ``faiss flat``
(float32, beside NOQUANT). Redis ÷ faiss at the same ef is what the network, redis-py and the
server cost over the algorithm itself. faiss is a benchmark-only dependency (the ``bench`` extra).

Data: clustered unit vectors shaped like real embeddings, not uniform noise: 1,000 clusters of
Zipf-distributed sizes (imbalanced classes) with varying spreads, living mostly in a 48-dimensional
subspace of the 128 dimensions, plus a little isotropic noise. Queries are fresh draws from the same
distribution (not indexed). The machine is shared: the load average is recorded at the start and
end of every measurement; absolute numbers are noisy, ratios less so. Writes the raw numbers to
``--out`` after every configuration (a stopped run keeps what it measured) and Markdown tables to
stdout.
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
BATCH = 1000  # upserts per pipelined batch, as the worker sends them
REDIS_DEFAULT_EF = 100  # VSIM's EF when none is given (vset.c VSET_DEFAULT_SEARCH_EF)
HNSW_M, BUILD_EF = 16, 200  # Redis's defaults (VADD M and EF), given to faiss as well
# name: (label, quantization, shards, on a 3-master cluster)
CONFIGS = {"q8": ("Q8, 1 shard", "q8", 1, False),
           "noquant": ("NOQUANT, 1 shard", "noquant", 1, False),
           "bin": ("BIN, 1 shard", "bin", 1, False),
           "q8x4": ("Q8, 4 shards", "q8", 4, False),
           "cluster": ("Q8, 4 shards, 3-master cluster", "q8", 4, True)}
FAISS_BESIDE = {"q8": "faiss SQ8", "noquant": "faiss flat"}


def make_vectors(n: int, dim: int, seed: int, clusters: int = 1000, rank: int = 48,
                 chunk: int = 100_000) -> np.ndarray:
    """``n`` embedding-like unit vectors (see the module docstring); deterministic per seed.
    Drawn in chunks so a million of them needs no float64 temporaries of gigabytes."""
    rng = np.random.default_rng(1234)  # the same clusters for data and queries
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0]  # an orthonormal 48-d subspace
    centres = rng.normal(size=(clusters, rank))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    spreads = rng.uniform(0.25, 0.6, size=clusters)
    draw = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        which = draw.choice(clusters, size=m, p=weights / weights.sum())
        local = centres[which] + draw.normal(size=(m, rank)) * (spreads[which, None]
                                                               / math.sqrt(rank))
        x = local @ basis.T + draw.normal(size=(m, dim)) * (0.05 / math.sqrt(dim))
        out[lo:lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int = K, chunk: int = 65_536
                ) -> np.ndarray:
    """The true top-k ids by inner product (cosine: unit vectors). Scanned in chunks of the
    data, keeping a running top-k, so 1,000 queries over 1M vectors need ~260 MB, not 4 GB."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for lo in range(0, len(data), chunk):
        scores = queries @ data[lo:lo + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        ids = np.concatenate([best_ids, top + lo], axis=1)
        both = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        keep = np.argsort(-both, axis=1, kind="stable")[:, :k]
        best_ids = np.take_along_axis(ids, keep, axis=1)
        best_scores = np.take_along_axis(both, keep, axis=1)
    return best_ids


def card(dim: int) -> ModelCard:
    return ModelCard(embedding_dim=dim, preprocessing=Preprocessing(), version="bench")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def items(data: np.ndarray, lo: int, hi: int) -> list[tuple]:
    return [(str(i), data[i], {"label": f"c{i % 1000}", "source": f"cam{i % 4}"})
            for i in range(lo, hi)]


def bulk_load(url: str, name: str, data: np.ndarray, start: int, stop: int, connections: int,
              desc: str) -> float:
    """Upsert rows start..stop in pipelined batches spread over ``connections`` client
    connections (a thread each); returns vectors per second."""
    local = threading.local()

    def one_batch(lo: int) -> None:
        if not hasattr(local, "index"):
            local.index = VectorIndex.live(connect(url), name)
        hi = min(lo + BATCH, stop)
        local.index.upsert(items(data, lo, hi))
        bar.update(hi - lo)

    with tqdm(total=stop - start, desc=desc, unit="vec", unit_scale=True, file=sys.stderr,
              leave=False) as bar:
        began = time.perf_counter()
        with ThreadPoolExecutor(connections) as pool:
            list(pool.map(one_batch, range(start, stop, BATCH)))  # re-raises a batch's error
        return (stop - start) / (time.perf_counter() - began)


def timed_queries(searchers: Sequence[Callable[[np.ndarray], list[int]]], queries: np.ndarray,
                  truth: np.ndarray) -> dict:
    """Recall@10, latency percentiles and QPS, one thread per searcher (each its own client)."""
    threads = len(searchers)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    found = [0] * threads
    chunks = np.array_split(np.arange(len(queries)), threads)
    for search in searchers:  # warm the connections
        search(queries[0])

    def worker(t: int) -> None:
        for i in chunks[t]:
            began = time.perf_counter()
            ids = searchers[t](queries[i])
            latencies[t].append(time.perf_counter() - began)
            found[t] += len(set(ids) & set(truth[i].tolist()))

    began = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall = time.perf_counter() - began
    flat = np.array([x for lat in latencies for x in lat]) * 1000
    return {"threads": threads, "recall@10": sum(found) / (K * len(queries)),
            "p50_ms": float(np.percentile(flat, 50)), "p99_ms": float(np.percentile(flat, 99)),
            "qps": len(queries) / wall}


def redis_queries(url: str, name: str, queries: np.ndarray, truth: np.ndarray, threads: int,
                  ef: int) -> dict:
    indexes = [VectorIndex.live(connect(url), name) for _ in range(threads)]
    server = indexes[0].client
    if not is_cluster(server):
        server.config_resetstat()  # server-side VSIM percentiles of this run only
    searchers = [lambda q, ix=ix: [int(h.id) for h in ix.search(q, k=K, ef=ef)]
                 for ix in indexes]
    return {"ef": ef, **timed_queries(searchers, queries, truth), **server_latency(server)}


def server_latency(client) -> dict:
    """Redis's own VSIM percentiles (time inside the server, threads included): what is left
    of the client's latency is the network, redis-py, and waiting for a core."""
    if is_cluster(client):
        return {}
    stats = client.info("latencystats").get("latency_percentiles_usec_VSIM", {})
    return {"server_p50_ms": stats.get("p50", 0) / 1000, "server_p99_ms": stats.get("p99", 0)
            / 1000} if stats else {}


def redis_memory(index: VectorIndex, baseline: int) -> dict:
    keys = sum(int(index.client.memory_usage(key, samples=0) or 0) for key in index.keys)
    n = max(index.count(), 1)
    if is_cluster(index.client):
        return {"bytes_per_vector": keys / n, "index_bytes": keys}
    info = index.client.info("memory")
    return {"bytes_per_vector": keys / n, "index_bytes": keys,
            "used_memory_bytes": int(info["used_memory"]) - baseline,
            "rss_bytes": int(info["used_memory_rss"])}


def measure_point(row: dict, n: int, load_per_s: float, load_began: list[float],
                  queries: np.ndarray, truth: np.ndarray, efs: Sequence[int],
                  run: Callable[[int, int], dict], memory: Callable[[], dict]) -> None:
    """One size of one configuration: the runs at every ef with 1 and 4 threads, memory."""
    began = load_average()
    runs = [run(threads, ef) for ef in efs for threads in (1, 4)]
    row["points"].append({"n": n, "estimated": False, "load_per_s": load_per_s,
                          "load_average_start": load_began, "load_average_queries": began,
                          "load_average_end": load_average(), "runs": runs, **memory()})


def bench_redis(key: str, url: str, data: np.ndarray, queries: np.ndarray, truths: dict,
                sizes: Sequence[int], efs: Sequence[int], connections: int, rows: list,
                save: Callable[[], None]) -> None:
    label, quant, shards, _ = CONFIGS[key]
    client = connect(url)
    client.flushall()
    baseline = 0 if is_cluster(client) else int(client.info("memory")["used_memory"])
    name = f"bench-{key}"
    index = VectorIndex.for_model(client, name, card(data.shape[1]), quant, shards=shards)
    row: dict = {"config": label, "engine": "redis", "quant": quant, "shards": shards,
                 "connections": connections, "points": []}
    rows.append(row)
    done = 0
    for n in sizes:
        began = load_average()
        rate = bulk_load(url, name, data, done, n, connections, f"{label}: load to {n:,}")
        done = n
        point_efs = efs if n == sizes[-1] else (REDIS_DEFAULT_EF,)
        measure_point(row, n, rate, began, queries, truths[n], point_efs,
                      lambda threads, ef, n=n: redis_queries(url, name, queries, truths[n],
                                                             threads, ef),
                      lambda: redis_memory(index, baseline))
        print(f"  {label} at {n:,}: {summary(row['points'][-1])}", file=sys.stderr)
        save()  # a run stopped later keeps this size
    if not is_cluster(client):
        vinfo = client.execute_command("VINFO", index.keys[0])  # redis-py: a dict or a list
        pairs = vinfo.items() if isinstance(vinfo, dict) else \
            zip(vinfo[0::2], vinfo[1::2], strict=True)
        row["vinfo"] = {(k.decode() if isinstance(k, bytes) else str(k)):
                        (v.decode() if isinstance(v, bytes) else v) for k, v in pairs}
    client.flushall()  # the next configuration starts from an empty server
    save()


def faiss_index(kind: str, dim: int, sample: np.ndarray):
    import faiss

    if kind == "faiss SQ8":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M,
                                  faiss.METRIC_INNER_PRODUCT)
        index.train(sample)  # the per-dimension ranges of the 8-bit codes
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = BUILD_EF
    return index


def faiss_bytes(index) -> int:
    """The index's own arrays: codes, links, offsets and levels (what the graph holds)."""
    hnsw = index.hnsw
    return (index.storage.sa_code_size() * index.ntotal + 4 * hnsw.neighbors.size()
            + 8 * hnsw.offsets.size() + 4 * hnsw.levels.size())


def bench_faiss(kind: str, data: np.ndarray, queries: np.ndarray, truths: dict,
                sizes: Sequence[int], efs: Sequence[int], build_threads: int, rows: list,
                save: Callable[[], None]) -> None:
    import faiss

    index = faiss_index(kind, data.shape[1], data[:min(len(data), 100_000)])
    row: dict = {"config": kind, "engine": "faiss", "build_threads": build_threads,
                 "points": []}
    rows.append(row)
    done = 0
    for n in sizes:
        began = load_average()
        faiss.omp_set_num_threads(build_threads)
        t0 = time.perf_counter()
        for lo in tqdm(range(done, n, 10_000), desc=f"{kind}: add to {n:,}", file=sys.stderr,
                       leave=False):
            index.add(data[lo:min(lo + 10_000, n)])
        rate = (n - done) / (time.perf_counter() - t0)
        done = n
        faiss.omp_set_num_threads(1)  # one query at a time: no OpenMP team to wake

        def run(threads: int, ef: int, n=n) -> dict:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            searcher = lambda q: index.search(q[None], K, params=params)[1][0].tolist()  # noqa: E731
            return {"ef": ef, **timed_queries([searcher] * threads, queries, truths[n])}

        point_efs = efs if n == sizes[-1] else (REDIS_DEFAULT_EF,)
        measure_point(row, n, rate, began, queries, truths[n], point_efs, run,
                      lambda: {"bytes_per_vector": faiss_bytes(index) / index.ntotal,
                               "index_bytes": faiss_bytes(index)})
        print(f"  {kind} at {n:,}: {summary(row['points'][-1])}", file=sys.stderr)
        save()


def summary(point: dict) -> str:
    one = pick(point, REDIS_DEFAULT_EF, 1)
    return (f"load {point['load_per_s']:,.0f}/s, recall {one['recall@10']:.3f}, "
            f"p50 {one['p50_ms']:.2f} ms, p99 {one['p99_ms']:.2f} ms, "
            f"{point['bytes_per_vector']:,.0f} B/vector")


def pick(point: dict, ef: int, threads: int) -> dict:
    return next(r for r in point["runs"] if r["ef"] == ef and r["threads"] == threads)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def growth_table(rows: list[dict]) -> str:
    """Every configuration at every size, default ef (100)."""
    lines = ["| config | N | load/s | recall@10 | p50 ms (1 thr) | p99 ms (1 thr) | "
             "server p99 ms | QPS 1 thr | QPS 4 thr | p99 ms (4 thr) | bytes/vector | "
             "memory | load avg |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| --- |"]
    for row in rows:
        for p in row["points"]:
            one, four = pick(p, REDIS_DEFAULT_EF, 1), pick(p, REDIS_DEFAULT_EF, 4)
            total = p.get("used_memory_bytes", p["index_bytes"])
            lines.append(
                f"| {row['config']} | {p['n']:,} | {p['load_per_s']:,.0f} | "
                f"{one['recall@10']:.3f} | {one['p50_ms']:.2f} | {one['p99_ms']:.2f} | "
                f"{_ms(one.get('server_p99_ms'))} | {one['qps']:,.0f} | {four['qps']:,.0f} | "
                f"{four['p99_ms']:.2f} | {p['bytes_per_vector']:,.0f} | "
                f"{total / 1e6:,.0f} MB | {p['load_average_start'][0]:.1f} → "
                f"{p['load_average_end'][0]:.1f} |")
    return "\n".join(lines)


def ef_table(rows: list[dict]) -> str:
    """Every configuration at the largest size, every ef."""
    lines = ["| config | N | ef | recall@10 | p50 ms (1 thr) | p99 ms (1 thr) | server p99 ms "
             "| QPS 1 thr | QPS 4 thr | p99 ms (4 thr) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        p = row["points"][-1]
        for ef in dict.fromkeys(r["ef"] for r in p["runs"]):
            one, four = pick(p, ef, 1), pick(p, ef, 4)
            lines.append(f"| {row['config']} | {p['n']:,} | {ef} | {one['recall@10']:.3f} | "
                         f"{one['p50_ms']:.2f} | {one['p99_ms']:.2f} | "
                         f"{_ms(one.get('server_p99_ms'))} | {one['qps']:,.0f} | "
                         f"{four['qps']:,.0f} | {four['p99_ms']:.2f} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    """Side-by-side ratios at the largest size, default ef, one client thread."""
    by = {r["config"]: r for r in rows if r["points"]}
    out: dict = {}

    def at(config: str, threads: int = 1, n: int | None = None) -> tuple[dict, dict]:
        points = by[config]["points"]
        p = next((q for q in points if q["n"] == n), points[-1])
        return p, pick(p, REDIS_DEFAULT_EF, threads)

    def common(a: str, b: str) -> int | None:
        both = {p["n"] for p in by[a]["points"]} & {p["n"] for p in by[b]["points"]}
        return max(both) if both else None

    for redis_key, lib in FAISS_BESIDE.items():
        label = CONFIGS[redis_key][0]
        if label in by and lib in by and (n := common(label, lib)):
            (rp, r1), (fp, f1) = at(label, n=n), at(lib, n=n)
            tag = f"{label.split(',')[0]} / {lib} at {n:,}"
            out[f"p50 {tag}"] = r1["p50_ms"] / f1["p50_ms"]
            if "server_p50_ms" in r1:
                out[f"server p50 {tag}"] = r1["server_p50_ms"] / f1["p50_ms"]
            out[f"QPS 1 thr {tag}"] = r1["qps"] / f1["qps"]
            out[f"recall {label.split(',')[0]} - {lib} at {n:,}"] = (r1["recall@10"]
                                                                    - f1["recall@10"])
            out[f"bytes/vector {tag}"] = rp["bytes_per_vector"] / fp["bytes_per_vector"]
            out[f"load rate {tag}"] = rp["load_per_s"] / fp["load_per_s"]
    q8, f32 = CONFIGS["q8"][0], CONFIGS["noquant"][0]
    if q8 in by and f32 in by and (n := common(q8, f32)):
        (qp, q1), (fp, f1) = at(q8, n=n), at(f32, n=n)
        out[f"memory NOQUANT / Q8 at {n:,}"] = fp["bytes_per_vector"] / qp["bytes_per_vector"]
        out[f"recall NOQUANT - Q8 at {n:,}"] = f1["recall@10"] - q1["recall@10"]
        out[f"p50 NOQUANT / Q8 at {n:,}"] = f1["p50_ms"] / q1["p50_ms"]
    if q8 in by:
        out["QPS 4 threads / 1 thread (Q8)"] = at(q8, 4)[1]["qps"] / at(q8)[1]["qps"]
        first, last = by[q8]["points"][0], by[q8]["points"][-1]
        if last["n"] > first["n"]:
            growth = math.log(last["n"] / first["n"])
            out[f"p50 per e-fold of N (Q8, {first['n']:,} → {last['n']:,})"] = (
                pick(last, REDIS_DEFAULT_EF, 1)["p50_ms"]
                / pick(first, REDIS_DEFAULT_EF, 1)["p50_ms"]) ** (1 / growth)
    return out


def targets(rows: list[dict]) -> dict:
    """The issue's targets at the largest size, Q8, one shard, default ef, one client thread."""
    row = next((r for r in rows if r["config"] == CONFIGS["q8"][0] and r["points"]), None)
    if row is None:
        return {}
    p = row["points"][-1]
    one = pick(p, REDIS_DEFAULT_EF, 1)
    total = p.get("used_memory_bytes", p["index_bytes"])
    return {"n": p["n"], "recall@10 >= 0.95": one["recall@10"] >= 0.95,
            "p99 <= 5 ms (1 thread)": one["p99_ms"] <= 5.0,
            "memory <= 1 GB": total <= 1e9,
            "recall@10": one["recall@10"], "p99_ms": one["p99_ms"], "memory_bytes": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="10000,30000,100000",
                        help="gallery sizes, comma-separated, ascending; every one measured")
    parser.add_argument("--configs", default="q8,noquant",
                        help=f"Redis configurations, comma-separated, of {', '.join(CONFIGS)}; "
                             "NAME:N stops that one (and its faiss row) at size N")
    parser.add_argument("--no-faiss", action="store_true",
                        help="leave out the in-process faiss rows")
    parser.add_argument("--efs", default="100,50,200,400",
                        help="search ef values measured at the largest size (100 is Redis's "
                             "default and the one measured at every size)")
    parser.add_argument("--connections", type=int, default=4,
                        help="client connections the bulk load is spread over")
    parser.add_argument("--faiss-threads", type=int, default=2, help="faiss build threads")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "index_bench.json"))
    args = parser.parse_args()
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",")})
    caps = {}
    for item in (k.strip() for k in args.configs.split(",") if k.strip()):
        name, _, cap = item.partition(":")
        caps[name] = int(cap.replace("_", "")) if cap else sizes[-1] if sizes else 0
    keys = list(caps)
    unknown = [k for k in keys if k not in CONFIGS]
    if unknown or not sizes:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}"
                     if unknown else "--sizes is empty")
    efs = tuple(dict.fromkeys([REDIS_DEFAULT_EF, *(int(e) for e in args.efs.split(","))]))

    started = load_average()
    data = make_vectors(sizes[-1], args.dim, seed=1)
    queries = make_vectors(args.queries, args.dim, seed=2)
    t0 = time.perf_counter()
    truths = {n: exact_top_k(data[:n], queries) for n in sizes}
    print(f"exact top-{K} of {args.queries:,} queries at {len(sizes)} sizes: "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    result: dict = {"sizes": sizes, "dim": args.dim, "queries": args.queries, "k": K,
                    "hnsw": {"M": HNSW_M, "build_ef": BUILD_EF, "default_ef": REDIS_DEFAULT_EF},
                    "cpu_count": os.cpu_count(), "load_average_start": started, "rows": []}

    def save() -> None:
        result.update(load_average_end=load_average(), ratios=ratios(result["rows"]),
                      targets=targets(result["rows"]))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))

    workdir = Path(tempfile.mkdtemp(prefix="twinstream-bench-"))
    server = redis_process(workdir).start()
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        rows = result["rows"]
        for key in keys:
            own = [n for n in sizes if n <= caps[key]]
            if CONFIGS[key][3]:
                with LocalRedisCluster(workdir / "cluster", masters=3) as cluster:
                    bench_redis(key, cluster.url, data, queries, truths, own, efs,
                                args.connections, rows, save)
            else:
                bench_redis(key, url, data, queries, truths, own, efs, args.connections, rows,
                            save)
            if key in FAISS_BESIDE and not args.no_faiss:
                bench_faiss(FAISS_BESIDE[key], data, queries, truths, own, efs,
                            args.faiss_threads, rows, save)
    finally:
        server.stop()

    rows = result["rows"]
    print(f"### Index growth: {', '.join(f'{n:,}' for n in sizes)} vectors x {args.dim}, "
          f"k={K}, {args.queries} queries, ef {REDIS_DEFAULT_EF} (load average "
          f"{started[0]:.1f} → {result['load_average_end'][0]:.1f} on {os.cpu_count()} cores, "
          "shared)\n")
    print(growth_table(rows))
    print(f"\n### ef at {sizes[-1]:,}\n")
    print(ef_table(rows))
    print("\n### Ratios measured side by side in this run\n")
    for key, value in result["ratios"].items():
        print(f"- {key}: {value:+.3f}" if " - " in key else f"- {key}: {value:.2f}")
    print(f"\n### Targets at {result['targets'].get('n', 0):,} (Q8, 1 shard, 1 thread)\n")
    for key, value in result["targets"].items():
        if isinstance(value, bool):
            print(f"- {key}: {'met' if value else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
