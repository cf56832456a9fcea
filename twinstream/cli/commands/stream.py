"""The streaming half: ``ingest``, ``delete``, ``worker``, ``reindex``, ``status``, ``dlq``."""

from __future__ import annotations

import argparse
from dataclasses import replace

from twinstream.cli.main import add_command, add_group
from twinstream.errors import InputError, ServiceUnavailable, TwinstreamError
from twinstream.fields import check_attributes
from twinstream.files import expand_paths

KAFKA = ("kafka.bootstrap", "kafka.topic", "kafka.partitions")
WORKER = (*KAFKA, "kafka.group", "redis.url", "redis.index", "redis.quant", "model.path",
          "model.threads", "model.providers", "worker.batch", "worker.max_wait_ms",
          "worker.processes", "worker.decode_threads", "worker.metrics_port",
          "worker.log_format")


def register(subparsers) -> None:
    p = add_command(subparsers, "ingest", ingest, "publish images to the images topic",
                    settings=(*KAFKA, "kafka.inline_max_bytes"))
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    p.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="look into sub-folders of a folder (default: yes)")
    p.add_argument("--label-from-dir", action=argparse.BooleanOptionalAction, default=True,
                   help="use each file's folder name as its label (default: yes)")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="an attribute for every image (repeatable), e.g. --attr camera=door")
    p.add_argument("--id-from", choices=("content", "path"), default="content",
                   help="image id: the content hash (re-ingesting is a no-op) or the file path")

    p = add_command(subparsers, "delete", delete,
                    "remove images from the index (publishes a tombstone per id)",
                    settings=KAFKA)
    p.add_argument("ids", nargs="+", metavar="ID", help="image ids")

    p = add_command(subparsers, "worker", worker,
                    "consume images, embed them with onnxruntime, upsert into Redis",
                    settings=WORKER)
    p.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                   help="stop after no record arrived for this long (for batch jobs)")

    p = add_command(subparsers, "reindex", reindex,
                    "re-embed the whole topic with a new model into a new index version",
                    settings=WORKER)
    p.add_argument("--exit-when-caught-up", action="store_true",
                   help="stop once the topic as it was at the start is re-embedded")

    add_command(subparsers, "status", status,
                "lag per partition, workers alive, index counts, dead letters",
                settings=("kafka.bootstrap", "kafka.topic", "kafka.group", "redis.url",
                          "redis.index"))

    dlq = add_group(subparsers, "dlq", "inspect and replay dead letters (<topic>.dlq)")
    p = add_command(dlq, "list", dlq_list, "show the dead letters and why they failed",
                    settings=("kafka.bootstrap", "kafka.topic"))
    p.add_argument("--limit", type=int, default=100, help="show at most this many (newest)")
    p = add_command(dlq, "replay", dlq_replay,
                    "publish dead letters to the images topic again (after a fix)",
                    settings=("kafka.bootstrap", "kafka.topic", "kafka.group"))
    p.add_argument("--id", dest="ids", action="append", default=[], metavar="ID",
                   help="replay only this id (repeatable; does not move the replay position)")
    p.add_argument("--dry-run", action="store_true", help="count, publish nothing")


def _attributes(pairs: list[str]) -> dict:
    attrs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--attr needs KEY=VALUE, got {pair!r}")
        attrs[key.strip()] = value
    return check_attributes(attrs)


def ingest(args, settings, out) -> int:
    from worker.ingest import ingest_files

    attributes = _attributes(args.attr)
    paths = expand_paths(args.paths, recursive=args.recursive)
    if not paths:
        hint = "" if args.recursive else " (images in sub-folders need --recursive)"
        raise InputError("no image files found in " + " ".join(args.paths) + hint)
    summary = ingest_files(settings.kafka, paths, label_from_dir=args.label_from_dir,
                           attributes=attributes, id_from=args.id_from,
                           progress=lambda it: out.progress(it, total=len(paths),
                                                            desc="ingest", unit="img"))
    for path, reason in summary.failed.items():
        out.warn(f"{path}: {reason}")
    if summary.by_reference and not settings.worker.uri_roots:
        out.warn(f"{summary.by_reference} image(s) above --inline-max-bytes were sent by "
                 "reference: workers read them only below TWINSTREAM_WORKER_URI_ROOTS (not set "
                 "here); set it on the workers to a folder that holds them, or they become "
                 "dead letters")
    out.result(summary.to_dict(),
               f"published {summary.published}, skipped {len(summary.skipped)} (same id twice), "
               f"failed {len(summary.failed)}"
               + (f"; {summary.by_reference} by reference (uri)" if summary.by_reference else ""))
    return TwinstreamError.exit_code if summary.failed else 0  # published, with failures


def delete(args, settings, out) -> None:
    from worker.ingest import delete_ids

    n = delete_ids(settings.kafka, args.ids)
    out.result({"tombstones": n, "ids": args.ids},
               f"published {n} tombstone(s); workers remove the ids from the index")


def _processes(settings) -> int:
    from worker.pool import cpu_count

    return settings.worker.processes or cpu_count()


def _need_model(settings) -> None:
    if not settings.model.path:
        raise InputError("no model: pass --model model.onnx or set TWINSTREAM_MODEL_PATH")


def worker(args, settings, out) -> int:
    from worker.pool import run_pool, run_worker, total

    _need_model(settings)
    processes = _processes(settings)
    out.info(f"worker: {processes} process(es) consuming {settings.kafka.topic} at "
             f"{settings.kafka.bootstrap} into index {settings.redis.index!r}")
    if processes == 1:
        counts = run_worker(settings, args.exit_when_idle, quiet=args.quiet)
        code = 0
    else:
        from worker.consumer import preflight

        preflight(settings)  # one clear error here rather than one per child
        results: list = []
        code = run_pool(settings, processes, args.exit_when_idle, quiet=args.quiet,
                        results=results)
        counts = total(results)
    out.result({"exit_code": code, **counts},
               f"indexed {counts.get('indexed', 0)}, deleted {counts.get('deleted', 0)}, "
               f"dead letters {counts.get('dead_lettered', 0)}")
    return code


def reindex(args, settings, out) -> int:
    from worker.reindex import run_reindex

    _need_model(settings)
    bar = out.progress(total=0, desc="re-embedding", unit="rec")

    def progress(done: int, records: int) -> None:
        bar.total = records
        bar.n = done
        bar.refresh()

    result = run_reindex(replace(settings), _processes(settings), args.exit_when_caught_up,
                         quiet=args.quiet, progress=progress, on_caught_up=out.info)
    bar.close()
    out.result(result.to_dict(),
               f"index {settings.redis.index!r} version {result.version}: {result.count} items "
               f"({'caught up' if result.caught_up else 'stopped before catching up'}); live "
               f"version is {result.live_version}")
    return result.exit_code


def status(args, settings, out) -> int:
    from worker.status import gather, render

    state = gather(settings)
    out.result(state, render(state))
    return ServiceUnavailable.exit_code if state["errors"] else 0


def dlq_list(args, settings, out) -> None:
    from worker.dlq import list_dead_letters

    letters = list_dead_letters(settings.kafka)
    shown = sorted(letters, key=lambda d: d.time_ms)[-args.limit:] if args.limit else letters
    lines = [f"{d.partition}/{d.offset}  {d.stage:6s}  {d.id or '(no key)'}  {d.reason}"
             for d in shown]
    lines.append(f"{len(letters)} dead letter(s) in {settings.kafka.dlq_topic}")
    out.result({"topic": settings.kafka.dlq_topic, "total": len(letters),
                "letters": [d.to_dict() for d in shown]}, "\n".join(lines))


def dlq_replay(args, settings, out) -> None:
    from worker.dlq import replay

    summary = replay(settings.kafka, args.ids, dry_run=args.dry_run)
    verb = "would replay" if args.dry_run else "replayed"
    out.result(summary.to_dict(),
               f"{verb} {summary.replayed} dead letter(s) to {settings.kafka.topic}"
               + (f"; skipped {summary.skipped} whose value was too large to keep"
                  if summary.skipped else ""))
