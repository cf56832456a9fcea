"""Where the index's latency tail comes from (not a test): VSIM threaded vs NOTHREAD, side by side.

    nice -n 5 .venv/bin/python bench/index_tail.py            # 100,000 Q8 vectors, ~4 minutes

Redis runs each VSIM on a thread of its own by default: the main thread hands the query over and
takes the reply back, two wake-ups that each wait for a core on a busy machine. ``NOTHREAD`` runs
the search in the main thread. Both modes are sent as the same raw ``VSIM`` through the same
connection, query by query one after the other (the order swapped each round), so a burst of load
hits both alike; the result says how much of the p99 is the hand-over and how much the search.
Writes ``bench/results/index_tail.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from index_bench import bulk_load, card, exact_top_k, load_average, make_vectors  # noqa: E402

from index.store import VectorIndex, connect  # noqa: E402
from twinstream.stack import redis_process  # noqa: E402

K = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ef", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "bench/results/index_tail.json"))
    args = parser.parse_args()
    data = make_vectors(args.n, 128, seed=1)
    queries = make_vectors(args.queries, 128, seed=2)
    truth = exact_top_k(data, queries)
    started = load_average()
    server = redis_process(Path(tempfile.mkdtemp(prefix="twinstream-tail-"))).start()
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        client = connect(url)
        index = VectorIndex.for_model(client, "tail", card(128), "q8")
        rate = bulk_load(url, "tail", data, 0, args.n, 4, f"load {args.n:,}")
        blobs = [q.astype("<f4").tobytes() for q in queries]
        modes = {"threaded": (), "NOTHREAD": ("NOTHREAD",)}
        times: dict[str, list[float]] = {m: [] for m in modes}
        found = dict.fromkeys(modes, 0)
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for i, blob in enumerate(blobs):  # query by query, the modes one after the other
                for mode in order:
                    extra = modes[mode]
                    t0 = time.perf_counter()
                    ids = client.execute_command("VSIM", index.vset, "FP32", blob, "COUNT", K,
                                                 "EF", args.ef, *extra)
                    times[mode].append(time.perf_counter() - t0)
                    found[mode] += len({int(x) for x in ids} & set(truth[i].tolist()))
    finally:
        server.stop()
    result = {"n": args.n, "ef": args.ef, "queries": args.queries, "rounds": args.rounds,
              "load_per_s": rate, "load_average_start": started,
              "load_average_end": load_average(), "cpu_count": os.cpu_count(),
              "estimated": False, "modes": {}}
    for mode, values in times.items():
        ms = np.array(values) * 1000
        result["modes"][mode] = {"p50_ms": float(np.percentile(ms, 50)),
                                 "p90_ms": float(np.percentile(ms, 90)),
                                 "p99_ms": float(np.percentile(ms, 99)),
                                 "recall@10": found[mode] / (K * len(values))}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"### VSIM threaded vs NOTHREAD: {args.n:,} Q8 vectors, ef {args.ef}, "
          f"{args.rounds} x {args.queries} queries each, alternating (load average "
          f"{started[0]:.1f} → {result['load_average_end'][0]:.1f} on {os.cpu_count()} cores)\n")
    print("| mode | p50 ms | p90 ms | p99 ms | recall@10 |\n| --- | ---: | ---: | ---: | ---: |")
    for mode, m in result["modes"].items():
        print(f"| {mode} | {m['p50_ms']:.2f} | {m['p90_ms']:.2f} | {m['p99_ms']:.2f} | "
              f"{m['recall@10']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
