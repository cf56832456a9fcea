"""``twinstream up`` (the local stack until Ctrl-C) and ``twinstream demo`` (the main job)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from twinstream.cli import add_command

DEFAULT_AOF_DIR = "twinstream-data"


def register(subparsers) -> None:
    p = add_command(subparsers, "up", up,
                    "start a local Kafka-protocol broker and Redis 8 until Ctrl-C",
                    settings=("kafka.bootstrap", "redis.url"))
    p.add_argument("--data-dir", default="", metavar="DIR",
                   help="keep Redis's append-only file (and the ports) in DIR across restarts, and "
                        "the broker's topics and offsets on a local S3 stand-in that outlives "
                        "broker restarts (default: everything in memory, gone on exit)")
    p.add_argument("--redis-aof", action="store_true",
                   help=f"Redis with append-only persistence, in --data-dir (default "
                        f"{DEFAULT_AOF_DIR} when --data-dir is not given)")

    p = add_command(subparsers, "demo", demo,
                    "shapes -> train -> export -> stack -> ingest -> workers -> query, end to end",
                    settings=("kafka.bootstrap", "redis.url", "redis.index"))
    p.add_argument("--out", default="demo-out", help="folder for data, model and results.png")
    p.add_argument("--epochs", type=int, default=8)


def up(args, settings, out) -> int:
    """Until Ctrl-C; a server that dies is restarted on the same port and files (the other one
    keeps running), with a backoff while its restarts fail."""
    from twinstream.stack import stack_for

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    data_dir = args.data_dir or (DEFAULT_AOF_DIR if args.redis_aof else "")
    with stack_for(settings, data_dir=data_dir or None) as stack:
        pids = {p.name: p.pid for p in stack.started_services}
        out.result({**stack.env(), "workdir": str(stack.workdir), "data_dir": data_dir or None,
                    "broker_storage": stack.broker_storage, "pids": pids},
                   stack.export_lines() + f"\n# data: {data_dir or 'in memory'}; broker storage: "
                   f"{stack.broker_storage}\n# running; Ctrl-C stops the servers")

        def on_event(proc, what: str, detail: str) -> None:
            out.warn(f"{proc.name} {what} ({detail})"
                     + ("; restarting" if what == "died" else ""))
            if what == "died" and proc.name == "broker" and stack.s3 is None:
                out.warn("the broker keeps its topics in memory: they are gone "
                         "(use --data-dir to keep them across broker restarts)")

        restarter = stack.restarter(on_event)
        while not stop.wait(0.5):
            restarter.check()
    out.info("stopped")
    return 0


def demo(args, settings, out) -> int:
    from twinstream.demo import DemoConfig, run_demo

    report = run_demo(DemoConfig(out=Path(args.out), epochs=args.epochs), settings, out)
    text = [f"{'query':40s} top-{len(report['results'][0]['hits'])} labels"]
    for r in report["results"]:
        labels = ", ".join(h["attributes"].get("label", "?") for h in r["hits"])
        text.append(f"{Path(r['query']).name:40s} {r['agreement']:.2f}  [{labels}]")
    text.append(f"top-5 class agreement: {report['agreement_top5']:.3f} over "
                f"{report['queries']} held-out queries; {report['gallery']} images indexed")
    text.append(f"picture: {report['picture']}; total {report['total_s']}s "
                f"({', '.join(f'{k} {v}s' for k, v in report['timings_s'].items())})")
    out.result({k: v for k, v in report.items()}, "\n".join(text))
    return 0 if report["agreement_top5"] >= 0.9 else 1
