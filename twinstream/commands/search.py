"""``twinstream query | recognize | enroll | verify`` and ``twinstream index list | stats |
promote | drop``: everything that reads or manages the vector index from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from index.filters import parse_filter
from twinstream.cli import add_command, add_group
from twinstream.errors import InputError
from twinstream.fields import check_id

REDIS = ("redis.url", "redis.index")
SEARCH = (*REDIS, "redis.ef", "model.path")


def register(subparsers) -> None:
    p = add_command(subparsers, "query", query,
                    "find the images most similar to an image, a vector or an indexed id",
                    settings=SEARCH)
    p.add_argument("image", nargs="?", help="the query image file")
    p.add_argument("--id", dest="like_id", help="more like this: an id already in the index")
    p.add_argument("--vector", help="a query embedding: a .npy or .json file, or a JSON list")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    _search_options(p)

    p = add_command(subparsers, "recognize", recognize_cmd,
                    "who is this? the best enrolled label, or 'unknown' below the threshold",
                    settings=SEARCH)
    p.add_argument("image", help="the image to recognise")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity needed to accept a label (default: the model card's)")
    p.add_argument("-k", type=int, default=5, help="candidates to report (default 5)")
    p.add_argument("--filter", default=None, help="only these references, e.g. "
                   "'.source == \"enroll\"'")

    p = add_command(subparsers, "enroll", enroll_cmd,
                    "add reference images of a person or class (one is enough)",
                    settings=(*REDIS, "redis.quant", "redis.shards", "model.path"))
    p.add_argument("images", nargs="+", metavar="IMAGE", help="reference image file(s)")
    p.add_argument("--label", required=True, help="the name to recognise these images as")
    p.add_argument("--id", dest="image_id", default=None,
                   help="id of the reference (one image only; default: its content hash)")

    p = add_command(subparsers, "verify", verify_cmd,
                    "are two images the same person/class? similarity and same/different",
                    settings=("model.path",))
    p.add_argument("first", metavar="A", help="an image file")
    p.add_argument("second", metavar="B", help="another image file")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity needed for 'same' (default: the model card's)")

    group = add_group(subparsers, "index", "list, inspect, promote and drop index versions")
    add_command(group, "list", index_list, "every index and its versions", settings=("redis.url",))
    p = add_command(group, "stats", index_stats, "counts, memory and settings of one version",
                    settings=REDIS)
    p.add_argument("--version", dest="index_version", default=None,
                   help="model version (default: the live one)")
    p = add_command(group, "promote", index_promote,
                    "make a version the live one (atomic: readers switch at once)", settings=REDIS)
    p.add_argument("index_version", metavar="VERSION")
    p = add_command(group, "drop", index_drop, "delete a version and its vectors", settings=REDIS)
    p.add_argument("index_version", metavar="VERSION")
    p.add_argument("--force", action="store_true", help="drop it even if it is the live version")


def _search_options(p) -> None:
    p.add_argument("--filter", default=None,
                   help="attribute filter, e.g. '.label == \"cat\" and .source == \"cam1\"'")
    p.add_argument("--exact", action="store_true",
                   help="exact search (linear scan, slow): the true top-k, for checking recall")
    p.add_argument("--filter-ef", type=int, default=None,
                   help="how many nodes a filtered search may visit (default 100 x k)")


# --- helpers ---------------------------------------------------------------------------------

def _encoder(settings):
    from twinstream.encoder_options import load_encoder

    return load_encoder(settings)


def _read_image(path_text: str) -> tuple[Path, bytes]:
    path = Path(path_text)
    if not path.is_file():
        raise InputError(f"no such image file: {path}")
    return path, path.read_bytes()


def _embed(encoder, path_text: str):
    path, data = _read_image(path_text)
    embedded = encoder.embed_bytes([data])
    if embedded.failed:
        raise InputError(f"{path}: {embedded.failed[0]}")
    return embedded.vectors[0]


def _live_index(settings):
    from index.store import VectorIndex, connect

    return VectorIndex.live(connect(settings.redis.url), settings.redis.index,
                            ef=settings.redis.ef or None)


def _read_vector(text: str):
    import numpy as np

    try:
        if text.lstrip().startswith("["):
            return np.asarray(json.loads(text), dtype=np.float32).reshape(-1)
        if text.endswith(".npy"):
            return np.load(text, allow_pickle=False).astype(np.float32).reshape(-1)
        return np.asarray(json.loads(Path(text).read_text()), dtype=np.float32).reshape(-1)
    except (ValueError, TypeError, OSError) as exc:
        raise InputError(f"--vector {text[:40]!r} is not a .npy file, a .json file or a JSON "
                         f"list of numbers ({exc})") from None


def _hit_lines(hits) -> str:
    lines = []
    for rank, h in enumerate(hits, 1):
        attrs = json.dumps(h.attributes, ensure_ascii=False, sort_keys=True)
        lines.append(f"{rank:3d}  {h.score:+.4f}  {h.id}  {attrs}")
    return "\n".join(lines) or "(no results)"


# --- search and recognition --------------------------------------------------------------------

def query(args, settings, out) -> None:
    given = [x for x in (args.image, args.like_id, args.vector) if x]
    if len(given) != 1:
        raise InputError("give exactly one of IMAGE, --id ID or --vector V")
    if args.like_id:
        check_id(args.like_id)
    parse_filter(args.filter)  # a bad filter is refused before any work
    options = {"filter": args.filter, "exact": args.exact, "filter_ef": args.filter_ef}
    source: dict = {}
    if args.image:
        encoder = _encoder(settings)
        vector = _embed(encoder, args.image)
        index = _live_index(settings)
        index.check_model(encoder.card)
        source = {"query": args.image}
    else:
        index = _live_index(settings)
    if args.like_id:
        hits = index.search_by_id(args.like_id, k=args.k, **options)
        source = {"query_id": args.like_id}
    else:
        if args.vector:
            vector = _read_vector(args.vector)
            source = {"query_vector": True}
        hits = index.search(vector, k=args.k, **options)
    out.result({**source, "index": index.info.name, "model_version": index.info.version,
                "hits": [h.to_dict() for h in hits]}, _hit_lines(hits))


def recognize_cmd(args, settings, out) -> None:
    from index.recognition import recognize

    parse_filter(args.filter)
    encoder = _encoder(settings)
    vector = _embed(encoder, args.image)
    index = _live_index(settings)
    index.check_model(encoder.card)
    result = recognize(index, vector, threshold=args.threshold, k=args.k, filter=args.filter)
    if result.known:
        text = (f"{result.label}  (similarity {result.score:+.4f} >= threshold "
                f"{result.threshold:.4f}; reference {result.best.id})")
    elif result.best is None:
        text = "unknown  (no labelled references in the index: enrol some first)"
    else:
        text = (f"unknown  (closest: {result.best.attributes.get('label')!s} at "
                f"{result.score:+.4f} < threshold {result.threshold:.4f})")
    out.result({"image": args.image, **result.to_dict()}, text)


def enroll_cmd(args, settings, out) -> None:
    from index.recognition import enroll
    from index.store import VectorIndex, connect
    from twinstream.messages import content_id
    from twinstream.preprocess import decode_image
    from twinstream.thumbnails import make_thumbnail

    if args.image_id and len(args.images) > 1:
        raise InputError("--id names one reference; give one image with it")
    encoder = _encoder(settings)
    index = VectorIndex.for_settings(connect(settings.redis.url), settings.redis,
                                     encoder.card)
    decoded = []
    for path_text in args.images:  # everything is checked before anything is written
        path, data = _read_image(path_text)
        try:
            decoded.append((path, args.image_id or content_id(data),
                            decode_image(data, encoder.max_pixels)))
        except InputError as exc:
            raise InputError(f"{path}: {exc.message}") from None
    vectors = encoder.embed_images([img for _, _, img in decoded])
    ids = []
    for (path, image_id, img), vector in zip(decoded, vectors, strict=True):
        ids.append(enroll(index, image_id, vector, args.label, {"uri": str(path.resolve())}))
        index.put_thumbnails({image_id: make_thumbnail(img)})
    live = VectorIndex.live_version(index.client, index.info.name) == index.info.version
    note = "" if live else f" (not live yet: 'twinstream index promote {index.info.version}')"
    out.result({"label": args.label.strip(), "ids": ids, "index": index.info.name,
                "model_version": index.info.version, "live": live},
               f"enrolled {len(ids)} image(s) as {args.label.strip()!r} in index "
               f"{index.info.name!r} version {index.info.version}{note}")


def verify_cmd(args, settings, out) -> None:
    from index.recognition import resolve_threshold, verify

    encoder = _encoder(settings)
    a, b = _embed(encoder, args.first), _embed(encoder, args.second)
    result = verify(a, b, resolve_threshold(encoder.card.threshold, args.threshold))
    verdict = "same" if result.same else "different"
    out.result({"a": args.first, "b": args.second, **result.to_dict()},
               f"{verdict}  (similarity {result.score:+.4f}, threshold {result.threshold:.4f})")


# --- index versions ----------------------------------------------------------------------------

def index_list(args, settings, out) -> None:
    from index.store import connect
    from index.versions import list_indexes, list_versions

    client = connect(settings.redis.url)
    rows = [v for name in list_indexes(client) for v in list_versions(client, name)]
    lines = [f"{'index':20s} {'version':18s} live {'count':>9s} {'dim':>5s} quant   shards"]
    for v in rows:
        lines.append(f"{v.name:20s} {v.version:18s} {'*' if v.live else ' ':4s} {v.count:9d} "
                     f"{v.dim:5d} {v.quant:7s} {v.shards}")
    out.result({"versions": [v.to_dict() for v in rows]},
               "\n".join(lines) if rows else "(no indexes yet)")


def index_stats(args, settings, out) -> None:
    from index.store import VectorIndex, connect
    from index.versions import stats

    client = connect(settings.redis.url)
    index = (VectorIndex.open(client, settings.redis.index, args.index_version)
             if args.index_version else VectorIndex.live(client, settings.redis.index))
    data = stats(index)
    out.result(data, "\n".join(f"{k:20s} {v}" for k, v in data.items()))


def index_promote(args, settings, out) -> None:
    from index.store import VectorIndex, connect

    client = connect(settings.redis.url)
    before = VectorIndex.live_version(client, settings.redis.index)
    VectorIndex.promote(client, settings.redis.index, args.index_version)
    count = VectorIndex.open(client, settings.redis.index, args.index_version).count()
    if count == 0:
        out.warn(f"version {args.index_version} is empty: queries will find nothing")
    out.result({"index": settings.redis.index, "live": args.index_version, "previous": before,
                "count": count},
               f"index {settings.redis.index!r}: live version {before} -> {args.index_version} "
               f"({count} vectors)")


def index_drop(args, settings, out) -> None:
    from index.store import connect
    from index.versions import drop_version

    held = drop_version(connect(settings.redis.url), settings.redis.index, args.index_version,
                        force=args.force)
    out.result({"index": settings.redis.index, "dropped": args.index_version, "vectors": held},
               f"dropped version {args.index_version} of index {settings.redis.index!r} "
               f"({held} vectors)")
