"""The API's memory under concurrent uploads of huge images, with and without the decode budget.

    .venv/bin/python bench/api_memory.py [--model model.onnx] [--clients 8] [--side 6300]

Issue 11 found that eight concurrent uploads of a 6300 x 6300 PNG (131 KB each, just under the
40 Mpx limit) took the API from 143 MB to 2.6 GB resident, 2.0 GB still held a minute later. This
starts ``twinstream serve`` twice in its own process, side by side in one run: once with the
default decode budget and once with a budget so large that it never refuses (the old
behaviour); ``--clients`` threads each post the big PNG to ``/verify`` (two decodes per request)
at the same time, three rounds. Per server it reads the resident size before, its peak
(VmHWM) and after a pause, and counts the answers by status. Writes
``bench/results/api_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from twinstream.stack import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "api_memory.json"


def big_png(side: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 160)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def build_model(workdir: Path) -> Path:
    from export.onnx_export import export_onnx
    from training.shapes import generate_shapes
    from training.train import TrainConfig, train

    generate_shapes(workdir / "shapes", per_class=10, seed=3)
    run = train(TrainConfig(data=str(workdir / "shapes"), out=str(workdir / "run"), epochs=1,
                            arch="tiny", image_size=32, split="images", test_fraction=0.0,
                            seed=0), log=lambda _m: None)
    model = workdir / "model.onnx"
    samples = sorted((workdir / "shapes").rglob("*.png"))[:8]
    export_onnx(run.checkpoint, model, [p.read_bytes() for p in samples])
    return model


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def serve(model: Path, budget_pixels: int, concurrency: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSTREAM_")}
    env.update({"TWINSTREAM_API_DECODE_PIXEL_BUDGET": str(budget_pixels),
                "TWINSTREAM_API_DECODE_CONCURRENCY": str(concurrency),
                "TWINSTREAM_API_MAX_UPLOAD_BYTES": str(50_000_000)})
    proc = subprocess.Popen([sys.executable, "-m", "twinstream", "serve", "--model", str(model),
                             "--port", str(port), "--redis-url", "redis://127.0.0.1:1", "-q"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def hammer(url: str, image: bytes, clients: int) -> Counter:
    statuses: Counter = Counter()
    lock = threading.Lock()

    def one() -> None:
        try:
            r = httpx.post(f"{url}/verify", files={"a": ("a.png", image), "b": ("b.png", image)},
                           timeout=300)
            code = r.status_code
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        with lock:
            statuses[code] += 1

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def measure(model: Path, image: bytes, clients: int, rounds: int, budget: int,
            concurrency: int) -> dict:
    proc, url = serve(model, budget, concurrency)
    try:
        before = memory_kb(proc.pid)["VmRSS"]
        statuses: Counter = Counter()
        started = time.perf_counter()
        for _ in range(rounds):
            statuses += hammer(url, image, clients)
        seconds = time.perf_counter() - started
        time.sleep(5)
        after = memory_kb(proc.pid)
        return {"budget_pixels": budget, "decode_concurrency": concurrency,
                "rss_before_mb": round(before / 1024, 1),
                "rss_peak_mb": round(after["VmHWM"] / 1024, 1),
                "rss_after_5s_mb": round(after["VmRSS"] / 1024, 1),
                "answers": {str(k): v for k, v in sorted(statuses.items(), key=str)},
                "seconds": round(seconds, 2)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an exported .onnx (default: a tiny one, built here)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", type=int, default=6300, help="width = height of the PNG")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_model(Path(tmp))
        image = big_png(args.side)
        from twinstream.settings import ApiSettings

        defaults = ApiSettings()
        rows = {
            "default budget": measure(model, image, args.clients, args.rounds,
                                      defaults.decode_pixel_budget, defaults.decode_concurrency),
            "no budget (before issue 11)": measure(model, image, args.clients, args.rounds,
                                                   10**12, 10**6),
        }
    result = {"image": {"side": args.side, "png_bytes": len(image)}, "clients": args.clients,
              "rounds": args.rounds, "requests": args.clients * args.rounds,
              "machine": platform.machine(), "cpus": os.cpu_count(),
              "loadavg_at_end": os.getloadavg(), "estimated": False, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.clients} clients x {args.rounds} rounds, /verify with two "
          f"{args.side}x{args.side} PNGs ({len(image):,} bytes each)")
    print("| server | RSS before | peak | after 5 s | answers | time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['rss_before_mb']} MB | {r['rss_peak_mb']} MB | "
              f"{r['rss_after_5s_mb']} MB | {r['answers']} | {r['seconds']} s |")
    base, old = rows["default budget"], rows["no budget (before issue 11)"]
    print(f"peak ratio (no budget / budget): {old['rss_peak_mb'] / base['rss_peak_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
