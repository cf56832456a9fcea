"""Discovering identities: how well and how fast ``twinstream cluster`` groups an index.

Quality, on the Omniglot proxy's unseen alphabets (Japanese katakana, Sanskrit, Tagalog of
``images_background_small2``: 106 characters x 20 drawers, alphabets never seen in training),
embedded by a model trained on ``images_background_small1`` only, indexed in a real Redis 8
vector set (q8, as by default) and clustered through the same code as the command
(``index.clusters.discover``: the vector set's own neighbour search, then the graph method).
Scored against the true characters: adjusted Rand index (items left out of every cluster count
as singletons), purity (the share of items whose cluster's majority character is theirs;
singletons are pure by definition, so coverage, the share of items in a cluster, is given
beside it), homogeneity / completeness, and the number of clusters against 106. Side by side:
Leiden with CPM (the command's method, at its default resolution), Leiden with modularity and
connected components, at the card's pair threshold (the default) and at the card's stricter
far@0.01 threshold.

Speed: synthetic clustered unit vectors (groups of 20, like the characters, in the model's
dimension), 10k and 100k items: the time of each step of ``discover`` (reading the items, the
neighbour queries, the graph method); the time to fill the index is reported apart.

    nice -n 5 .venv/bin/python bench/cluster_bench.py                 # about 10 minutes
    .venv/bin/python bench/cluster_bench.py --sizes 10000 --model M.onnx

The model: ``--model``, else the row (a) model of ``bench/omniglot.py`` if its run folder is
still there (the recommended handwriting command, 15 minutes on small1), else one trained here
(``twinstream train`` with the recommended flags, ``--train-minutes``, default 5). Writes
bench/results/cluster_bench.json, with the machine's load at the start and end of each part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.omniglot import RECOMMENDED, extract  # noqa: E402
from index.clusters import discover  # noqa: E402
from index.store import VectorIndex, connect  # noqa: E402
from training.data import scan_image_folder  # noqa: E402
from twinstream.modelcard import ModelCard  # noqa: E402
from twinstream.preprocess import Preprocessing  # noqa: E402
from twinstream.runtime import Encoder  # noqa: E402
from twinstream.stack import redis_process  # noqa: E402

ROW_A_MODEL = Path.home() / ".cache/twinstream/bench-runs/a/model.onnx"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def scores(truth: np.ndarray, clusters: list[list[int]], n: int) -> dict:
    """ARI, purity, homogeneity/completeness of a clustering of ``n`` items (items in no
    cluster are singletons) against ``truth``."""
    from sklearn.metrics import adjusted_rand_score, homogeneity_completeness_v_measure

    assigned = np.arange(n) + len(clusters)  # singletons: a label of their own
    for c, members in enumerate(clusters):
        assigned[members] = c
    majority = sum(np.bincount(truth[m]).max() for m in clusters)
    covered = sum(len(m) for m in clusters)
    homogeneity, completeness, v = homogeneity_completeness_v_measure(truth, assigned)
    return {"ari": round(float(adjusted_rand_score(truth, assigned)), 4),
            "purity": round((majority + (n - covered)) / n, 4),
            "purity_of_clustered": round(majority / covered, 4) if covered else None,
            "coverage": round(covered / n, 4), "clusters": len(clusters),
            "true_classes": len(np.unique(truth)),
            "homogeneity": round(float(homogeneity), 4),
            "completeness": round(float(completeness), 4), "v_measure": round(float(v), 4)}


def get_model(args, data: dict[str, Path]) -> tuple[Path, str]:
    if args.model:
        return args.model, f"given: {args.model}"
    if ROW_A_MODEL.is_file():
        return ROW_A_MODEL, ("bench/omniglot.py row (a), reused: the recommended command on "
                             f"images_background_small1 ({ROW_A_MODEL.parent})")
    run = args.runs / "cluster-bench"
    argv = ["train", "--data", str(data["small1"]), "--out", str(run),
            *shlex.split(RECOMMENDED), "--time-budget", f"{args.train_minutes:g}"]
    for command in (argv, ["export", str(run), "--out", str(run / "model.onnx")]):
        subprocess.run([sys.executable, "-m", "twinstream", *command, "-q"], cwd=ROOT,
                       check=True)
    return run / "model.onnx", "trained here: twinstream " + shlex.join(argv)


def quality(client, model: Path, test: Path, neighbours: int) -> dict:
    encoder = Encoder(model)
    folder = scan_image_folder(test)
    started = time.perf_counter()
    vectors = []
    for start in range(0, len(folder.paths), 256):
        chunk = folder.paths[start:start + 256]
        vectors.append(encoder.embed_bytes([p.read_bytes() for p in chunk]).vectors)
    vectors = np.concatenate(vectors)
    embed_s = time.perf_counter() - started
    ids = [p.relative_to(test).as_posix() for p in folder.paths]
    index = VectorIndex.for_model(client, "bench-omniglot", encoder.card, "q8")
    index.upsert([(i, v, {}) for i, v in zip(ids, vectors, strict=True)])
    position = {i: n for n, i in enumerate(ids)}
    card = encoder.card
    cuts = {"pair threshold (card, EER; the default)": card.threshold,
            "far@0.01 threshold (card)": card.thresholds.get("far@0.01")}
    rows = []
    for cut_name, cut in cuts.items():
        for method in ("leiden", "modularity", "components"):
            at = load()
            found = discover(index, cut, neighbours=neighbours, method=method)
            members = [[position[m] for m in c.members] for c in found.clusters]
            rows.append({"threshold": cut_name, "cosine": round(cut, 4),
                         "method": found.method, "neighbours": neighbours,
                         "resolution": found.resolution,
                         **scores(folder.labels, members, len(ids)),
                         "seconds": found.timings_s, "load": [at, load()]})
            print(f"omniglot {found.method:22s} {cut_name:42s} ARI {rows[-1]['ari']:.3f} "
                  f"purity {rows[-1]['purity']:.3f} coverage {rows[-1]['coverage']:.3f} "
                  f"clusters {rows[-1]['clusters']}", file=sys.stderr, flush=True)
    return {"model_version": card.version, "items": len(ids),
            "characters": len(folder.classes), "embed_seconds": round(embed_s, 1),
            "card_thresholds": {"pair": card.threshold, **card.thresholds},
            "index_quantization": "q8", "rows": rows}


def synthetic(n: int, dim: int, group: int = 20, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in groups of ``group`` around random centres: cosine about 0.8 inside a
    group, about 0 +- 1/sqrt(dim) across."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) // group
    centres = rng.normal(size=(labels.max() + 1, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(n, dim)) * 0.5 / np.sqrt(dim)
    x = centres[labels] + noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def speed(client, sizes: list[int], dim: int, neighbours: int) -> list[dict]:
    out = []
    for n in sizes:
        vectors, labels = synthetic(n, dim)
        card = ModelCard(embedding_dim=dim, preprocessing=Preprocessing(), threshold=0.5,
                         version=f"synthetic-{n}")
        index = VectorIndex.for_model(client, f"bench-speed-{n}", card, "q8")
        at, started = load(), time.perf_counter()
        ids = [f"item-{i:06d}" for i in range(n)]
        for start in range(0, n, 5000):
            index.upsert([(ids[i], vectors[i], {}) for i in range(start, min(n, start + 5000))])
        fill_s = time.perf_counter() - started
        at_cluster, started = load(), time.perf_counter()
        found = discover(index, 0.5, neighbours=neighbours)
        total = time.perf_counter() - started
        position = {i: k for k, i in enumerate(ids)}
        members = [[position[m] for m in c.members] for c in found.clusters]
        row = {"items": n, "dim": dim, "groups_of": 20, "neighbours": neighbours,
               "fill_index_seconds": round(fill_s, 1), "cluster_seconds": round(total, 2),
               "steps_seconds": found.timings_s, "edges": found.edges,
               "items_per_second": round(n / total), **scores(labels, members, n),
               "load_fill": [at, at_cluster], "load_cluster": [at_cluster, load()]}
        out.append(row)
        print(f"synthetic {n:7d} items: cluster {total:.1f} s ({found.timings_s}), ARI "
              f"{row['ari']:.3f}; filling the index took {fill_s:.1f} s", file=sys.stderr,
              flush=True)
        client.delete(*index.keys)  # free the memory before the next size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--zips", type=Path, default=ROOT.parent / "shared/datasets/omniglot")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/twinstream/omniglot")
    parser.add_argument("--runs", type=Path, default=Path.home() / ".cache/twinstream/bench-runs")
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--result", type=Path, default=ROOT / "bench/results/cluster_bench.json")
    args = parser.parse_args()
    if not args.zips.is_dir():
        args.zips = Path("/work/shared/datasets/omniglot")
    data = extract(args.zips, args.cache)
    model, provenance = get_model(args, data)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as workdir:
        redis = redis_process(Path(workdir)).start()
        try:
            client = connect(f"redis://127.0.0.1:{redis.port}")
            result = {"benchmark": "twinstream cluster: quality on unseen Omniglot alphabets, "
                                   "speed on synthetic clustered vectors",
                      "model": provenance,
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with "
                                 "other sessions",
                      "load_start": load(),
                      "omniglot": quality(client, model, data["test"], args.neighbours),
                      "speed": speed(client, args.sizes, Encoder(model).dim, args.neighbours)}
        finally:
            redis.stop()
    result["load_end"] = load()
    result["total_minutes"] = round((time.monotonic() - started) / 60, 1)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.result}", file=sys.stderr)


if __name__ == "__main__":
    main()
