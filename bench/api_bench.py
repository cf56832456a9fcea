"""Benchmark of ``POST /search`` over HTTP: requests/s and latency at 100k indexed items.

    nice -n 5 .venv/bin/python bench/api_bench.py [--items 100000] [--model model.onnx]

What it does, all on this machine:
1. a model: ``--model``, or the default architecture (the demo's) trained for one epoch on
   generated shapes and exported to ONNX (weights don't change the timing);
2. a Redis 8 (``TWINSTREAM_REDIS_URL`` or a local one) holding ``--items`` vectors: real
   embeddings of shape images plus synthetic clustered vectors (like real embeddings: many tight
   clusters, not uniform noise), Q8 as in production;
3. ``twinstream serve`` in its own process; 1 and 8 client threads send image uploads (k=10),
   then JSON vector queries (k=10), for a fixed time each;
4. side by side, in-process baselines of the two steps: decode+embed of one image, and one index
   query, without HTTP.

Prints a Markdown table and writes ``bench/results/api_bench.json``. The CPU is shared: the
clients, the server and Redis compete for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index.store import VectorIndex, connect  # noqa: E402
from twinstream.messages import content_id  # noqa: E402
from twinstream.preprocess import decode_image  # noqa: E402
from twinstream.runtime import Encoder  # noqa: E402
from twinstream.stack import free_port, redis_process  # noqa: E402
from twinstream.thumbnails import make_thumbnail  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "api_bench.json"


def build_model(workdir: Path) -> tuple[Path, list[Path]]:
    """The demo's architecture, trained briefly on shapes; returns the model and the images."""
    from export.onnx_export import export_onnx
    from training.shapes import generate_shapes
    from training.train import TrainConfig, train

    generate_shapes(workdir / "shapes", per_class=40, seed=3)
    images = sorted((workdir / "shapes").rglob("*.png"))
    run = train(TrainConfig(data=str(workdir / "shapes"), out=str(workdir / "run"), epochs=1,
                            seed=0), log=lambda _m: None)
    model = workdir / "model.onnx"
    export_onnx(run.checkpoint, model, [p.read_bytes() for p in images[:16]])
    return model, images


def clustered(n: int, dim: int, rng: np.random.Generator, clusters: int = 1000) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.15 * rng.normal(size=(n, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill_index(url: str, name: str, encoder: Encoder, images: list[Path], total: int) -> float:
    """Real embeddings of ``images`` plus synthetic vectors up to ``total``; returns seconds."""
    started = time.perf_counter()
    index = VectorIndex.for_model(connect(url), name, encoder.card, "q8")
    blobs = [p.read_bytes() for p in images]
    real = encoder.embed_bytes(blobs).vectors
    ids = [content_id(b) for b in blobs]
    index.upsert([(i, v, {"label": p.parent.name}) for i, v, p in zip(ids, real, images,
                                                                     strict=True)])
    index.put_thumbnails({i: make_thumbnail(decode_image(b)) for i, b in zip(ids, blobs,
                                                                            strict=True)})
    rng = np.random.default_rng(0)
    remaining = total - len(images)
    for start in range(0, remaining, 2000):
        chunk = clustered(min(2000, remaining - start), encoder.dim, rng)
        index.upsert((f"synthetic-{start + j}", v, {"label": f"cluster-{(start + j) % 1000}"})
                     for j, v in enumerate(chunk))
    assert index.count() == total, index.count()
    return time.perf_counter() - started


def start_server(url: str, name: str, model: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSTREAM_")}
    env.update({"TWINSTREAM_REDIS_URL": url, "TWINSTREAM_REDIS_INDEX": name,
                "TWINSTREAM_MODEL_PATH": str(model)})
    proc = subprocess.Popen([sys.executable, "-m", "twinstream", "serve", "-q", "--json",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    base = json.loads(proc.stdout.readline())["url"].rstrip("/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def load(base: str, clients: int, seconds: float, make_request) -> dict:
    """``clients`` threads, each with its own keep-alive connection, for ``seconds``."""
    # per request: (latency, server decode+embed, server index query), in seconds
    samples: list[tuple[float, float, float]] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(seed: int) -> None:
        nonlocal errors
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(3):  # warm the connection and the server's caches
                make_request(http, rng)
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = make_request(http, rng)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200:
                        errors += 1
                        continue
                    steps = response.json()["timings_ms"]
                    samples.append((elapsed, steps.get("decode_embed", 0.0) / 1000,
                                    steps["index_query"] / 1000))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    begun = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begun
    ms = np.array(samples) * 1000
    latency, embed, query = ms[:, 0], ms[:, 1], ms[:, 2]
    return {"clients": clients, "requests": len(samples), "errors": errors,
            "requests_per_s": len(samples) / wall,
            "p50_ms": float(np.percentile(latency, 50)),
            "p99_ms": float(np.percentile(latency, 99)),
            "server_decode_embed_p50_ms": float(np.median(embed)),
            "server_index_query_p50_ms": float(np.median(query)),
            # what is neither step: HTTP, multipart/JSON parsing, thread hops, the client itself
            "rest_p50_ms": float(np.median(latency - embed - query))}


def in_process_baseline(url: str, name: str, encoder: Encoder, blobs: list[bytes],
                        repeats: int = 300) -> dict:
    """The two steps alone, in this process, one at a time: what HTTP adds is the rest."""
    index = VectorIndex.live(connect(url), name)
    embed, query = [], []
    for i in range(repeats):
        data = blobs[i % len(blobs)]
        started = time.perf_counter()
        vector = encoder.embed_images([decode_image(data)])[0]
        embed.append(time.perf_counter() - started)
        started = time.perf_counter()
        index.search(vector, k=10)
        query.append(time.perf_counter() - started)
    return {"decode_embed_p50_ms": 1000 * float(np.median(embed)),
            "index_query_p50_ms": 1000 * float(np.median(query))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--model", type=Path, help="ONNX model (default: train a small one)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        if args.model:
            from training.shapes import generate_shapes

            generate_shapes(workdir / "shapes", per_class=40, seed=3)
            model, images = args.model, sorted((workdir / "shapes").rglob("*.png"))
        else:
            model, images = build_model(workdir)
        print(f"model ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        encoder = Encoder(model)
        redis_proc = None
        url = os.environ.get("TWINSTREAM_REDIS_URL", "")
        if not url:
            redis_proc = redis_process(workdir).start()
            url = f"redis://127.0.0.1:{redis_proc.port}"
        server = None
        try:
            fill_s = fill_index(url, "bench", encoder, images, args.items)
            print(f"{args.items} items indexed in {fill_s:.0f}s", file=sys.stderr)
            blobs = [p.read_bytes() for p in images]
            server, base = start_server(url, "bench", model)
            vectors = encoder.embed_bytes(blobs[:64]).vectors.tolist()

            def by_image(http, rng):
                data = blobs[int(rng.integers(len(blobs)))]
                return http.post("/search", files={"image": ("q.png", data, "image/png")},
                                 data={"k": "10"})

            def by_vector(http, rng):
                return http.post("/search", json={"vector": vectors[int(rng.integers(64))],
                                                  "k": 10})

            runs = []
            for kind, request in (("image upload", by_image), ("JSON vector", by_vector)):
                for clients in (1, 8):
                    result = load(base, clients, args.seconds, request)
                    runs.append({"query": kind, **result})
                    print(f"{kind}, {clients} clients: {result['requests_per_s']:.1f} req/s",
                          file=sys.stderr)
            # Right after the HTTP runs, with the server idle: the same steps without HTTP, with
            # the server's onnxruntime setting (one intra-op thread).
            baseline = in_process_baseline(url, "bench", Encoder(model, threads=1), blobs)
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
            if redis_proc is not None:
                redis_proc.stop()

    report = {"items": args.items, "dim": encoder.dim, "k": 10, "quant": "q8",
              "seconds_per_run": args.seconds, "model_version": encoder.version,
              "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "note": "shared 2-core machine; clients, server and Redis on the same cores",
              "in_process": baseline, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def table(report: dict) -> str:
    base = report["in_process"]
    lines = [
        f"`POST /search`, k=10, {report['items']:,} items (dim {report['dim']}, Q8), "
        f"{report['cpu_count']} shared cores",
        "",
        "| query | clients | req/s | p50 ms | p99 ms | server decode+embed p50 ms | "
        "server index query p50 ms | rest p50 ms (HTTP, parsing, client) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        embed = f"{r['server_decode_embed_p50_ms']:.2f}" if r["query"] == "image upload" else "–"
        lines.append(
            f"| {r['query']} | {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {embed} | {r['server_index_query_p50_ms']:.2f} | "
            f"{r['rest_p50_ms']:.1f} |")
    steps = base["decode_embed_p50_ms"] + base["index_query_p50_ms"]
    single = next(r for r in report["runs"] if r["query"] == "image upload" and r["clients"] == 1)
    lines += ["", f"Side by side, in process, no HTTP, one at a time (p50): decode+embed "
                  f"{base['decode_embed_p50_ms']:.2f} ms + index query "
                  f"{base['index_query_p50_ms']:.2f} ms = {steps:.2f} ms; over HTTP with one "
                  f"client the p50 is {single['p50_ms'] / steps:.1f}x that."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
