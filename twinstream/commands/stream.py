"""``twinstream ingest`` and ``twinstream worker``: the streaming half."""

from __future__ import annotations

from twinstream.cli import add_command
from twinstream.errors import InputError
from twinstream.files import expand_paths

KAFKA = ("kafka.bootstrap", "kafka.topic", "kafka.partitions")


def register(subparsers) -> None:
    p = add_command(subparsers, "ingest", ingest, "publish images to the images topic",
                    settings=KAFKA)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    p.add_argument("--no-label-from-dir", dest="label_from_dir", action="store_false",
                   help="do not use the parent folder's name as the label")

    p = add_command(subparsers, "worker", worker,
                    "consume images, embed them with onnxruntime, upsert into Redis",
                    settings=(*KAFKA, "kafka.group", "redis.url", "redis.index", "redis.quant",
                              "model.path", "model.threads", "worker.batch",
                              "worker.max_wait_ms", "worker.processes"))
    p.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                   help="stop after no record arrived for this long (for batch jobs)")


def ingest(args, settings, out) -> int:
    from worker.ingest import ingest_files

    paths = expand_paths(args.paths)
    if not paths:
        raise InputError("no image files found in " + " ".join(args.paths))
    summary = ingest_files(settings.kafka, paths, label_from_dir=args.label_from_dir,
                           progress=lambda it: out.progress(it, desc="ingest", unit="img"))
    for path, reason in summary.failed.items():
        out.warn(f"{path}: {reason}")
    out.result(summary.to_dict(), f"published {summary.published}, failed {len(summary.failed)}")
    return 1 if summary.failed else 0


def worker(args, settings, out) -> int:
    from worker.pool import run_pool

    if not settings.model.path:
        raise InputError("no model: pass --model model.onnx or set TWINSTREAM_MODEL_PATH")
    out.info(f"worker: {settings.worker.processes} process(es) consuming "
             f"{settings.kafka.topic} at {settings.kafka.bootstrap} into index "
             f"{settings.redis.index!r}")
    return run_pool(settings, settings.worker.processes, args.exit_when_idle)
