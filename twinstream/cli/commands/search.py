"""``twinstream query | recognize | enroll | verify`` and ``twinstream index list | stats |
promote | drop``: everything that reads or manages the vector index from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from twinstream.cli.main import add_command, add_group
from twinstream.errors import InputError

REDIS = ("redis.url", "redis.index")
SEARCH = (*REDIS, "redis.ef", "model.path", "model.providers")


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
                    "who is this? the nearest enrolled identity, or 'unknown' below the "
                    "threshold", settings=(*SEARCH, "recognize.target_fpir"))
    p.add_argument("image", help="the image to recognise")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity needed to accept an identity (default: the model "
                        "card's cut for the number of identities enrolled, at --target-fpir)")
    p.add_argument("-k", type=int, default=5, help="candidates to report (default 5)")
    p.add_argument("--filter", default=None, help="only these identities, e.g. "
                   "'.references >= 3'")

    p = add_command(subparsers, "enroll", enroll_cmd,
                    "add reference images to one identity (one is enough; more make its "
                    "prototype steadier)",
                    settings=(*REDIS, "redis.quant", "redis.shards", "model.path"))
    p.add_argument("images", nargs="+", metavar="IMAGE", help="reference image file(s)")
    p.add_argument("--label", required=True, help="the identity's name")
    p.add_argument("--id", dest="image_id", default=None,
                   help="id of the reference (one image only; default: its content hash)")

    p = add_command(subparsers, "verify", verify_cmd,
                    "are two images the same person/class? similarity and same/different",
                    settings=("model.path",))
    p.add_argument("first", metavar="A", help="an image file")
    p.add_argument("second", metavar="B", help="another image file")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity needed for 'same' (default: the model card's)")

    group = add_group(subparsers, "identities", "the enrolled identities: list, show, remove")
    add_command(group, "list", identities_list, "every identity and its number of references",
                settings=REDIS)
    p = add_command(group, "show", identities_show, "one identity and its reference images",
                    settings=REDIS)
    p.add_argument("label", metavar="NAME")
    p = add_command(group, "remove", identities_remove,
                    "remove an identity and its reference images", settings=REDIS)
    p.add_argument("label", metavar="NAME")

    p = add_command(subparsers, "cluster", cluster_cmd,
                    "discover identities: group the index's items into clusters of look-alikes",
                    description="Group the live index's items into clusters: each item's "
                    "nearest neighbours (the vector set's own search) above the threshold make "
                    "a graph, and Leiden communities of that graph are the clusters. Label one "
                    "with POST /clusters/{id}/label (the page does it) to enroll its members as "
                    "one identity.", settings=(*REDIS, "redis.ef"))
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine at which two items count as neighbours (default: the model "
                        "card's pair threshold)")
    p.add_argument("--min-size", type=int, default=2,
                   help="smallest group reported as a cluster (default: 2)")
    p.add_argument("--unlabeled-only", action="store_true",
                   help="cluster only items without a label (default: every item)")
    p.add_argument("--neighbours", type=int, default=16, metavar="K",
                   help="nearest neighbours asked per item (default: 16)")
    p.add_argument("--resolution", type=float, default=None, metavar="R",
                   help="Leiden CPM resolution: the cosine weight a cluster needs per pair of "
                        "members; lower keeps bigger identities whole (default: 0.0125 x K, "
                        "0.2 at 16 neighbours)")
    p.add_argument("--write", action="store_true",
                   help="store each item's cluster id in its 'cluster' attribute (filters can "
                        "then use .cluster) (default: only print)")
    p.add_argument("--show", type=int, default=20, metavar="N",
                   help="clusters printed in the text output (default: 20; --json has all)")

    p = add_command(subparsers, "duplicates", duplicates_cmd,
                    "near-duplicate groups in the index (copies, re-encodes, crops)",
                    settings=(*REDIS, "redis.ef"))
    p.add_argument("--threshold", type=float, default=0.98,
                   help="cosine at which two items are near-duplicates (default: 0.98)")
    p.add_argument("--neighbours", type=int, default=16, metavar="K",
                   help="nearest neighbours asked per item (default: 16)")
    p.add_argument("--show", type=int, default=50, metavar="N",
                   help="groups printed in the text output (default: 50; --json has all)")

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

def _service(settings, with_model: bool = True):
    """The search service the API and the demo use too: same answers, same refusals."""
    from index.service import SearchService
    from twinstream.cli.encoder_options import load_encoder

    return SearchService(settings, load_encoder(settings) if with_model else None)


def _read_image(path_text: str) -> tuple[Path, bytes]:
    path = Path(path_text)
    if not path.is_file():
        raise InputError(f"no such image file: {path}")
    return path, path.read_bytes()


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
                         f"list of numbers ({exc})") from exc


def _probability(p) -> str:
    return "" if p is None else f"  p={p:.3f}"


def _hit_lines(hits, probabilities) -> str:
    lines = []
    for rank, (h, p) in enumerate(zip(hits, probabilities, strict=True), 1):
        attrs = json.dumps(h.attributes, ensure_ascii=False, sort_keys=True)
        lines.append(f"{rank:3d}  {h.score:+.4f}{_probability(p)}  {h.id}  {attrs}")
    return "\n".join(lines) or "(no results)"


# --- search and recognition --------------------------------------------------------------------

def query(args, settings, out) -> None:
    given = [x for x in (args.image, args.like_id, args.vector) if x]
    if len(given) != 1:
        raise InputError("give exactly one of IMAGE, --id ID or --vector V")
    from index.service import SearchService

    if args.like_id:
        SearchService.check_id(args.like_id)
    SearchService.check_filter(args.filter)  # a bad filter is refused before any work
    options = {"exact": args.exact, "filter_ef": args.filter_ef}
    service = _service(settings, with_model=bool(args.image))
    if args.image:
        path, data = _read_image(args.image)
        result = service.search_image(data, args.k, args.filter, what=str(path), **options)
        source: dict = {"query": args.image}
    elif args.like_id:
        result = service.search_like(args.like_id, args.k, args.filter, **options)
        source = {"query_id": args.like_id}
    else:
        result = service.search_vector(_read_vector(args.vector), args.k, args.filter,
                                       **options)
        source = {"query_vector": True}
    probabilities = result.probabilities
    out.result({**source, "index": result.index.info.name,
                "model_version": result.index.info.version,
                "hits": [{**h.to_dict(), "probability": p}
                         for h, p in zip(result.hits, probabilities, strict=True)]},
               _hit_lines(result.hits, probabilities))


def recognize_cmd(args, settings, out) -> None:
    from index.service import SearchService

    SearchService.check_filter(args.filter)
    path, data = _read_image(args.image)
    result, _, _ = _service(settings).recognize(data, args.k, args.threshold, args.filter,
                                                what=str(path))
    if result.warning:
        out.warn(result.warning)
    chance = _probability(result.probability).replace("  p=", "; probability ")
    if result.known:
        text = (f"{result.label}  (similarity {result.score:+.4f} >= threshold "
                f"{result.threshold:.4f}{chance}; {result.best.identity.references} "
                "reference(s))")
    elif result.best is None:
        text = "unknown  (no identities enrolled in the index: enrol some first)"
    else:
        text = (f"unknown  (closest: {result.best.identity.label} at {result.score:+.4f} "
                f"< threshold {result.threshold:.4f}{chance})")
    text += f"\nthreshold: {result.threshold_reason}"
    out.result({"image": args.image, **result.to_dict()}, text)


def enroll_cmd(args, settings, out) -> None:
    files = [_read_image(p) for p in args.images]  # every file read before anything is written
    done = _service(settings).enroll(
        [data for _, data in files], args.label, args.image_id,
        per_image=[{"uri": str(path.resolve())} for path, _ in files],
        names=[str(path) for path, _ in files])
    info = done.index.info
    live = done.live
    note = "" if live else f" (not live yet: 'twinstream index promote {info.version}')"
    out.result({"label": done.label, "ids": done.ids, "references": done.references,
                "index": info.name, "model_version": info.version, "live": live},
               f"enrolled {len(done.ids)} image(s) as {done.label!r} ({done.references} "
               f"reference(s) now) in index {info.name!r} version {info.version}{note}")


def verify_cmd(args, settings, out) -> None:
    (path_a, a), (path_b, b) = _read_image(args.first), _read_image(args.second)
    result = _service(settings).verify(a, b, args.threshold, names=(str(path_a), str(path_b)))
    verdict = "same" if result.same else "different"
    chance = _probability(result.probability).replace("  p=", ", probability ")
    out.result({"a": args.first, "b": args.second, **result.to_dict()},
               f"{verdict}  (similarity {result.score:+.4f}{chance}, threshold "
               f"{result.threshold:.4f})")


# --- clusters ----------------------------------------------------------------------------------

def _cluster_lines(clusters, show: int, members_shown: int = 6) -> list[str]:
    lines = []
    for c in clusters[:show]:
        labels = ", ".join(f"{label} x{n}" for label, n in c.labels.items())
        head = ", ".join(c.members[:members_shown])
        more = f" (+{c.size - members_shown})" if c.size > members_shown else ""
        lines.append(f"{c.id}  {c.size:4d} items  cohesion {c.cohesion:.3f}"
                     + (f"  labels: {labels}" if labels else "") + f"\n    {head}{more}")
    if len(clusters) > show:
        lines.append(f"... {len(clusters) - show} more (--show N, or --json for all)")
    return lines


def cluster_cmd(args, settings, out) -> None:
    found = _service(settings, with_model=False).clusters(
        args.threshold, args.min_size, unlabeled_only=args.unlabeled_only,
        neighbours=args.neighbours, resolution=args.resolution, write=args.write,
        progress=lambda it: out.progress(it, desc="neighbours", unit="chunk"))
    if found.warning:
        out.warn(found.warning)
    result = found.clustering
    info = found.index.info
    text = [f"{len(result.clusters)} cluster(s) of {args.min_size}+ holding {result.clustered} "
            f"of {result.items} {'unlabeled ' if args.unlabeled_only else ''}item(s) in index "
            f"{info.name!r} ({result.method} at resolution {result.resolution:g}, "
            f"{result.edges} neighbour pairs)",
            f"threshold: {found.threshold_reason}", *_cluster_lines(result.clusters, args.show)]
    if found.written is not None:
        w = found.written
        text.append(f"wrote the 'cluster' attribute of {w['written']} item(s)"
                    + (f"; {w['changed_meanwhile']} changed meanwhile and were left as they "
                       "are" if w["changed_meanwhile"] else ""))
    out.result({"index": info.name, "model_version": info.version,
                "threshold_reason": found.threshold_reason, "warning": found.warning,
                "written": found.written, **result.to_dict()}, "\n".join(text))


def duplicates_cmd(args, settings, out) -> None:
    index, result = _service(settings, with_model=False).duplicates(
        args.threshold, neighbours=args.neighbours,
        progress=lambda it: out.progress(it, desc="neighbours", unit="chunk"))
    text = [f"{len(result.clusters)} group(s) of near-duplicates (cosine >= "
            f"{result.threshold:g}) holding {result.clustered} of {result.items} item(s) in "
            f"index {index.info.name!r}", *_cluster_lines(result.clusters, args.show)]
    out.result({"index": index.info.name, "model_version": index.info.version,
                **result.to_dict()}, "\n".join(text))


# --- identities --------------------------------------------------------------------------------

def identities_list(args, settings, out) -> None:
    index, found = _service(settings, with_model=False).identities()
    lines = [f"{i.references:4d}  {i.label}" for i in found]
    out.result({"index": index.info.name, "model_version": index.info.version,
                "identities": [i.to_dict() for i in found]},
               "\n".join(["refs  identity", *lines]) if found else "(no identities enrolled)")


def identities_show(args, settings, out) -> None:
    index, found, refs = _service(settings, with_model=False).identity(args.label)
    lines = [f"{found.label}: {found.references} reference(s) in index {index.info.name!r}"]
    lines += [f"  {ref}  {json.dumps(attrs, ensure_ascii=False, sort_keys=True)}"
              for ref, attrs in refs.items()]
    out.result({**found.to_dict(), "index": index.info.name,
                "references_detail": refs}, "\n".join(lines))


def identities_remove(args, settings, out) -> None:
    index, refs = _service(settings, with_model=False).remove_identity(args.label)
    out.result({"label": args.label.strip(), "removed_references": refs,
                "index": index.info.name},
               f"removed identity {args.label.strip()!r} and its {len(refs)} reference(s)")


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
