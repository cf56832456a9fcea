"""``twinstream query``: nearest images of an image."""

from __future__ import annotations

from pathlib import Path

from twinstream.cli import add_command
from twinstream.errors import InputError


def register(subparsers) -> None:
    p = add_command(subparsers, "query", query, "find the images most similar to an image",
                    settings=("redis.url", "redis.index", "model.path"))
    p.add_argument("image", help="the query image file")
    p.add_argument("-k", type=int, default=5, help="number of results")


def query(args, settings, out) -> None:
    from index.store import VectorIndex, connect
    from twinstream.runtime import Encoder

    path = Path(args.image)
    if not path.is_file():
        raise InputError(f"no such image file: {path}")
    if not settings.model.path:
        raise InputError("no model: pass --model model.onnx or set TWINSTREAM_MODEL_PATH")
    encoder = Encoder(settings.model.path, threads=settings.model.threads)
    index = VectorIndex.live(connect(settings.redis.url), settings.redis.index)
    index.check_model(encoder.card)
    embedded = encoder.embed_bytes([path.read_bytes()])
    if embedded.failed:
        raise InputError(f"{path}: {embedded.failed[0]}")
    hits = index.search(embedded.vectors[0], k=args.k)
    lines = [f"{h.score:+.4f}  {h.id}  {h.attributes.get('label', '')}" for h in hits]
    out.result({"query": str(path), "model_version": encoder.version,
                "hits": [h.to_dict() for h in hits]}, "\n".join(lines) or "(no results)")
