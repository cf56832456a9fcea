"""Discovering identities: group the live index's items into clusters, and find near-duplicates.

The graph comes from the vector set's own neighbour search: for every item, ``VSIM key ELE id
COUNT k`` (HNSW, pipelined; on a sharded index the item's vector is sent to every shard) gives
its ``k`` nearest items; an edge joins two items whose cosine reaches the threshold (default:
the model card's pair threshold, the cut that says "same identity" for one comparison). So the
graph is bounded (at most ``k`` edges per item) and costs one query per item, whatever the size
of the index.

Clusters: **Leiden community detection with the Constant Potts Model (CPM) on that thresholded
kNN graph**, edges weighted by their cosine (igraph's C implementation). A community is worth
keeping when the cosine weight inside it exceeds ``resolution`` per pair of its members. Why:

- connected components alone chain: one borderline pair between two people (a blurred photo, a
  look-alike) fuses them, and in a real gallery such pairs always exist. On the Omniglot proxy
  (106 unseen characters) the card's pair threshold leaves a single component: ARI 0.00;
- modularity (the usual objective) has a resolution limit: it cannot see communities smaller
  than about the square root of the graph's weight, so it merges small identities (ARI 0.29,
  27 clusters for 106 characters); CPM has no such limit;
- label propagation ("Chinese whispers", dlib's face clustering) needs no parameter but
  degrades as the graph gets denser (ARI 0.63 at 16 neighbours, 0.42 at 32) and is order-
  dependent; HDBSCAN-like density methods need a minimum cluster size and a distance scale of
  their own, and outside a kNN approximation O(n^2) memory;
- Leiden guarantees connected communities, and CPM never joins two pieces that share no edge,
  so the threshold keeps its meaning: items in one cluster are linked by same-identity edges;
- CPM's price is its resolution: the best one grows with the number of neighbours (it measured
  0.1, 0.2 and 0.3-0.5 at 8, 16 and 32 neighbours), so the default is
  ``RESOLUTION_PER_NEIGHBOUR`` times the neighbours (0.2 at 16: ARI 0.77, purity 0.86 there).
  An identity with more images than about 0.7 x neighbours / resolution (about 56 by default)
  can be split in several clusters: label them with the same name (they join one identity),
  or lower the resolution;
- it is fast (``bench/cluster_bench.py``) and installs from PyPI as a wheel with no torch.

A fixed seed makes a clustering reproducible; a cluster's id is a hash of its members, so the
same group of items gets the same id in every run and a client can name what it saw.

Near-duplicates (``duplicates``): connected components of the graph at a much higher threshold
(0.98 by default). There chaining is what is wanted: copies of copies are one group.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import igraph
import numpy as np

from index.identities import Identities
from index.query import parse_attributes
from index.store import VectorIndex
from twinstream.calibration import GUESS_THRESHOLD
from twinstream.errors import InputError, NotFoundError

DEFAULT_NEIGHBOURS = 16  # edges asked per item: a bounded-degree graph
DEFAULT_MIN_SIZE = 2
# CPM resolution per neighbour asked (see the module docstring): 0.2 at 16 neighbours.
RESOLUTION_PER_NEIGHBOUR = 0.0125
DUPLICATE_THRESHOLD = 0.98
CHUNK = 500  # commands per pipelined round trip
# Neighbour queries run with NOTHREAD: pipelined, the threaded VSIM measured 2.7x slower (the
# hand-off to a thread per command dominates a 0.4 ms search). In the main thread a chunk holds
# other clients for its duration, so chunks are small: 100 queries, tens of milliseconds.
QUERY_CHUNK = 100
SEED = 0
_RNG_LOCK = threading.Lock()  # igraph's random number generator is process-wide

# Compare-and-set of one element's attributes: written only if they are still what was read,
# so a worker's update that lands between the read and the write is never overwritten.
# KEYS[1] vector set; ARGV: id, attributes as read ('' = none), new attributes.
_SET_IF_UNCHANGED = """
if redis.call('VISMEMBER', KEYS[1], ARGV[1]) == 0 then return -1 end
local current = redis.call('VGETATTR', KEYS[1], ARGV[1])
if not current then current = '' end
if current ~= ARGV[2] then return 0 end
redis.call('VSETATTR', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Cluster:
    id: str  # "c" + a hash of the sorted member ids: the same group, the same id
    members: list[str]  # best connected first
    cohesion: float  # mean cosine of the edges inside the cluster
    labels: dict[str, int] = field(default_factory=dict)  # labels its members already carry

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def cover(self) -> str:
        return self.members[0]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "cohesion": self.cohesion,
                "cover": self.cover, "members": self.members, "labels": self.labels}


@dataclass
class Clustering:
    clusters: list[Cluster]  # largest first
    items: int  # items considered (all, or the unlabeled ones)
    edges: int  # neighbour pairs at or above the threshold
    threshold: float
    method: str
    neighbours: int
    resolution: float | None  # CPM's, for leiden-cpm
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    # The attributes exactly as read (JSON text, '' for none): what write_clusters compares.
    raw_attributes: dict[str, str] = field(default_factory=dict, repr=False)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def clustered(self) -> int:
        return sum(c.size for c in self.clusters)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "edges": self.edges, "threshold": self.threshold,
                "method": self.method, "neighbours": self.neighbours,
                "resolution": self.resolution,
                "clustered": self.clustered, "clusters": [c.to_dict() for c in self.clusters],
                "timings_s": self.timings_s}


def cluster_id(members: Iterable[str]) -> str:
    """The id of a group of items: a short hash of their sorted ids."""
    digest = hashlib.sha1("\n".join(sorted(members)).encode("utf-8")).hexdigest()
    return f"c{digest[:12]}"


# --- pure graph clustering ---------------------------------------------------------------------

def build_graph(n: int, edges: Iterable[tuple[int, int, float]]) -> igraph.Graph:
    """An undirected weighted graph on ``n`` nodes; a pair met twice keeps its higher weight."""
    pairs, weights = [], []
    for a, b, w in edges:
        if a != b:
            pairs.append((a, b) if a < b else (b, a))
            weights.append(float(w))
    graph = igraph.Graph(n=n, edges=pairs, edge_attrs={"weight": weights})
    graph.simplify(multiple=True, loops=True, combine_edges="max")
    return graph


def default_resolution(neighbours: int) -> float:
    return round(RESOLUTION_PER_NEIGHBOUR * neighbours, 6)


def communities(graph: igraph.Graph, resolution: float, seed: int = SEED) -> list[list[int]]:
    """Leiden communities (CPM, cosine-weighted edges, ``resolution`` per pair), each a list
    of node indices; reproducible for a seed. Nodes without edges come back alone."""
    return _leiden(graph, seed, objective_function="CPM", resolution=resolution)


def modularity_communities(graph: igraph.Graph, seed: int = SEED) -> list[list[int]]:
    """Leiden with the modularity objective (for comparison: it merges small identities)."""
    return _leiden(graph, seed, objective_function="modularity")


def _leiden(graph: igraph.Graph, seed: int, **options: Any) -> list[list[int]]:
    if graph.ecount() == 0:
        return [[v] for v in range(graph.vcount())]
    with _RNG_LOCK:  # igraph draws from one process-wide generator: seed it for this run
        igraph.set_random_number_generator(random.Random(seed))
        try:
            found = graph.community_leiden(weights="weight", n_iterations=-1, **options)
        finally:
            igraph.set_random_number_generator(random)
    return [list(c) for c in found]


def components(graph: igraph.Graph) -> list[list[int]]:
    """Connected components, each a list of node indices."""
    return [list(c) for c in graph.connected_components()]


def summarise(graph: igraph.Graph, groups: Sequence[Sequence[int]], ids: Sequence[str],
              min_size: int, attributes: dict[str, dict[str, Any]] | None = None
              ) -> list[Cluster]:
    """Groups of at least ``min_size`` as clusters: members ordered by their weighted degree
    inside the group (the most central first: the cover), largest cluster first."""
    attributes = attributes or {}
    weights = np.asarray(graph.es["weight"], dtype=np.float64) if graph.ecount() else None
    out = []
    for group in groups:
        if len(group) < max(1, min_size):
            continue
        inside = graph.subgraph(group) if weights is not None else None
        if inside is not None and inside.ecount():
            strength = inside.strength(weights="weight")
            cohesion = float(np.mean(inside.es["weight"]))
        else:
            strength, cohesion = [0.0] * len(group), 1.0
        order = sorted(range(len(group)), key=lambda i: (-strength[i], ids[group[i]]))
        members = [ids[group[i]] for i in order]
        labels = Counter(str(attributes.get(m, {}).get("label")) for m in members
                         if attributes.get(m, {}).get("label") not in (None, ""))
        out.append(Cluster(cluster_id(members), members, round(cohesion, 6),
                           dict(labels.most_common())))
    out.sort(key=lambda c: (-c.size, c.id))
    return out


# --- the graph from the vector set ---------------------------------------------------------------

def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _scores(raw: Any) -> list[tuple[str, float]]:
    """A ``VSIM ... WITHSCORES`` reply as (id, cosine) pairs (Redis says (1 + cos) / 2)."""
    if not raw:
        return []
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[0::2], raw[1::2], strict=True)
    return [(_text(element), 2.0 * float(score) - 1.0) for element, score in pairs]


class NeighbourGraph:
    """Reads one index version's items, their attributes and their nearest neighbours."""

    def __init__(self, index: VectorIndex, neighbours: int = DEFAULT_NEIGHBOURS,
                 ef: int | None = None, progress: Callable | None = None):
        if not isinstance(neighbours, int) or not 1 <= neighbours <= 1000:
            raise InputError(f"neighbours must be between 1 and 1000, got {neighbours!r}",
                             field="neighbours")
        self.index = index
        self.k = neighbours
        self.ef = ef
        self.progress = progress or (lambda iterable: iterable)

    def ids(self) -> list[str]:
        """Every element of every shard (``VRANDMEMBER`` with the set's size returns all)."""
        index = self.index
        with index.errors_during("list items"):
            pipe = index.client.pipeline(transaction=False)
            for key, size in zip(index.keys, index.shard_counts(), strict=True):
                pipe.execute_command("VRANDMEMBER", key, max(size, 1))
            replies = pipe.execute()
        return sorted({_text(e) for reply in replies for e in (reply or [])})

    def raw_attributes(self, ids: Sequence[str]) -> dict[str, str]:
        """Each id's attributes as Redis holds them (JSON text; '' for none)."""
        index, out = self.index, []
        with index.errors_during("read attributes"):
            for start in range(0, len(ids), CHUNK):
                pipe = index.client.pipeline(transaction=False)
                for image_id in ids[start:start + CHUNK]:
                    pipe.execute_command("VGETATTR", index._key_of(image_id), image_id)
                out += pipe.execute()
        return {i: _text(raw) if raw else "" for i, raw in zip(ids, out, strict=True)}

    def edges(self, ids: Sequence[str], threshold: float, extra: int = 0
              ) -> list[tuple[int, int, float]]:
        """(i, j, cosine) for each item i and each of its ``k`` (+ ``extra``) nearest items j
        among ``ids`` with a cosine of at least ``threshold``."""
        index = self.index
        position = {image_id: n for n, image_id in enumerate(ids)}
        count = min(self.k + 1 + extra, 10_000)
        tail: list[Any] = ["WITHSCORES", "COUNT", count, "NOTHREAD"]
        if self.ef:
            tail += ["EF", self.ef]
        out: list[tuple[int, int, float]] = []
        sharded = index.info.shards > 1
        chunks = range(0, len(ids), QUERY_CHUNK)
        for start in self.progress(chunks):
            chunk = ids[start:start + QUERY_CHUNK]
            queries = self._queries(chunk) if sharded else \
                [[("ELE", i)] for i in chunk]
            with index.errors_during("find neighbours"):
                pipe = index.client.pipeline(transaction=False)
                for per_shard in queries:
                    for key, query in zip(index.keys, per_shard, strict=True):
                        pipe.execute_command("VSIM", key, *query, *tail)
                replies = iter(pipe.execute())
            for image_id, per_shard in zip(chunk, queries, strict=True):
                i = position[image_id]
                hits = [h for _ in per_shard for h in _scores(next(replies))]
                hits.sort(key=lambda h: -h[1])
                taken = 0
                for other, cosine in hits:
                    if other == image_id:
                        continue
                    taken += 1
                    if taken > self.k + extra or cosine < threshold:
                        break
                    j = position.get(other)
                    if j is not None:
                        out.append((i, j, cosine))
        return out

    def _queries(self, chunk: Sequence[str]) -> list[list[tuple]]:
        """For a sharded index: each item's vector, sent to every shard."""
        index = self.index
        with index.errors_during("read vectors"):
            pipe = index.client.pipeline(transaction=False)
            for image_id in chunk:
                pipe.execute_command("VEMB", index._key_of(image_id), image_id)
            raw = pipe.execute()
        queries = []
        for values in raw:
            blob = np.asarray([float(x) for x in values or [0.0] * index.info.dim],
                              dtype="<f4").tobytes()
            queries.append([("FP32", blob)] * len(index.keys))
        return queries


def is_unlabeled(attributes: dict[str, Any]) -> bool:
    label = attributes.get("label")
    return label is None or (isinstance(label, str) and not label.strip())


def check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not -1.0 <= value <= 1.0:  # NaN fails this too
        raise InputError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}",
                         field="threshold")
    return value


def pair_threshold(info: Any, given: float | None) -> tuple[float, str, str | None]:
    """The clustering cut: ``given``, else the model card's pair threshold (``info``: the
    index's ``IndexInfo``), else a guess; (threshold, reason, warning)."""
    if given is not None:
        return check_threshold(given), f"cosine {given:.4f}: given with the request", None
    if info.threshold is not None:
        value = float(info.threshold)
        return value, (f"cosine {value:.4f}: the model card's pair threshold (two images of "
                       "one identity reach it at the validation equal-error rate)"), None
    return GUESS_THRESHOLD, (f"cosine {GUESS_THRESHOLD}: a guess (the model card records no "
                             "threshold)"), ("the model card has no pair threshold (an "
                                             "uncalibrated model): pass --threshold, or "
                                             "calibrate it with 'twinstream card write "
                                             "--calibrate'")


def check_min_size(min_size: int) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise InputError(f"min size must be a whole number >= 1, got {min_size!r}",
                         field="min_size")
    return min_size


METHODS = {"leiden": "leiden-cpm", "components": "connected-components",
           "modularity": "leiden-modularity"}  # the last one: for comparison (bench)


def check_resolution(resolution: float) -> float:
    value = float(resolution)
    if not 0 < value <= 1000:  # NaN fails this too
        raise InputError(f"resolution must be a positive number (the cosine weight a cluster "
                         f"needs per pair of members), got {resolution}", field="resolution")
    return value


def discover(index: VectorIndex, threshold: float, *, min_size: int = DEFAULT_MIN_SIZE,
             unlabeled_only: bool = False, neighbours: int = DEFAULT_NEIGHBOURS,
             resolution: float | None = None, ef: int | None = None, seed: int = SEED,
             method: str = "leiden", progress: Callable | None = None) -> Clustering:
    """Cluster the items of ``index`` (see the module docstring). ``method``: ``leiden``
    (CPM at ``resolution``, default ``default_resolution(neighbours)``) or ``components``.
    ``NotFoundError`` when there is nothing to cluster."""
    import time

    threshold, min_size = check_threshold(threshold), check_min_size(min_size)
    resolution = check_resolution(default_resolution(neighbours) if resolution is None
                                  else resolution)
    graph_source = NeighbourGraph(index, neighbours, ef, progress)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    ids = graph_source.ids()
    if not ids:
        raise NotFoundError(f"index {index.info.name!r} (version {index.info.version}) is "
                            "empty: nothing to cluster")
    raw = graph_source.raw_attributes(ids)
    attributes = {i: parse_attributes(text) for i, text in raw.items()}
    if unlabeled_only:
        ids = [i for i in ids if is_unlabeled(attributes[i])]
        if not ids:
            raise NotFoundError(f"index {index.info.name!r} has no unlabeled items to cluster "
                                "(every item has a label)")
    timings["read_items"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    # Labelled neighbours are dropped when only unlabeled items count: ask for more.
    edges = graph_source.edges(ids, threshold, extra=neighbours if unlabeled_only else 0)
    timings["neighbours"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    graph = build_graph(len(ids), edges)
    if method == "leiden":
        groups = communities(graph, resolution, seed)
    elif method == "modularity":
        groups = modularity_communities(graph, seed)
    else:
        groups = components(graph)
    clusters = summarise(graph, groups, ids, min_size, attributes)
    timings["cluster"] = round(time.perf_counter() - started, 3)
    return Clustering(clusters, len(ids), graph.ecount(), threshold, METHODS[method],
                      neighbours, resolution if method == "leiden" else None,
                      {i: attributes[i] for i in ids}, {i: raw[i] for i in ids}, timings)


def write_clusters(index: VectorIndex, clustering: Clustering) -> dict[str, int]:
    """Each clustered item gets its ``cluster`` attribute (others kept); an item considered but
    left out of every cluster loses a ``cluster`` attribute from an earlier run. Written by
    compare-and-set: an item changed meanwhile is skipped and counted, never overwritten."""
    member_of = {m: c.id for c in clustering.clusters for m in c.members}
    changes = []
    for image_id, attrs in clustering.attributes.items():
        wanted = member_of.get(image_id)
        if attrs.get("cluster") == wanted or (wanted is None and "cluster" not in attrs):
            continue
        updated = {k: v for k, v in attrs.items() if k != "cluster"}
        if wanted is not None:
            updated["cluster"] = wanted
        changes.append((image_id, clustering.raw_attributes.get(image_id, ""), updated))
    outcomes = Counter(set_attributes(index, changes).values())
    return {key: outcomes.get(key, 0) for key in OUTCOMES.values()}


OUTCOMES = {1: "written", 0: "changed_meanwhile", -1: "gone"}


def set_attributes(index: VectorIndex, changes: Sequence[tuple[str, str, dict[str, Any]]]
                   ) -> dict[str, str]:
    """Compare-and-set each (id, attributes as read, new attributes): written only where Redis
    still holds what was read. Returns each id's outcome: written, changed_meanwhile (skipped)
    or gone (no longer in the index)."""
    script = index.client.register_script(_SET_IF_UNCHANGED)
    outcome: dict[str, str] = {}
    with index.errors_during("write attributes"):
        for start in range(0, len(changes), CHUNK):
            chunk = changes[start:start + CHUNK]
            pipe = index.client.pipeline(transaction=False)
            for image_id, before, attrs in chunk:
                new = index._attributes_json(image_id, attrs)
                script(keys=[index._key_of(image_id)], args=[image_id, before, new],
                       client=pipe)
            for (image_id, _, _), result in zip(chunk, pipe.execute(), strict=True):
                outcome[image_id] = OUTCOMES[int(result)]
    return outcome


def enroll_members(index: VectorIndex, cluster: str, label: str, members: Sequence[str]
                   ) -> tuple[list[str], list[str], int]:
    """Make ``members`` one identity ``label``: each gets ``label`` and ``cluster`` in its
    attributes (compare-and-set, retried for those a worker changed meanwhile) and becomes a
    reference of the identity through ``Identities.add`` with its stored vector. Returns the
    ids enrolled, those skipped (gone, or changing all the time) and the identity's number of
    references afterwards."""
    done, skipped, pending = [], [], list(members)
    for _attempt in range(3):
        raw = NeighbourGraph(index).raw_attributes(pending)
        changes = [(i, raw[i], {**parse_attributes(raw[i]), "label": label, "cluster": cluster})
                   for i in pending]
        outcome = set_attributes(index, changes)
        done += [i for i, result in outcome.items() if result == "written"]
        skipped += [i for i, result in outcome.items() if result == "gone"]
        pending = [i for i, result in outcome.items() if result == "changed_meanwhile"]
        if not pending:
            break
    skipped += pending
    identities, enrolled, references = Identities(index), [], 0
    for image_id in done:
        vector = index.vector(image_id)
        if vector is None:  # deleted since its attributes were written
            skipped.append(image_id)
            continue
        references = identities.add(label, image_id, vector)
        enrolled.append(image_id)
    return enrolled, skipped, references


def duplicate_groups(index: VectorIndex, threshold: float = DUPLICATE_THRESHOLD, *,
                     neighbours: int = DEFAULT_NEIGHBOURS, ef: int | None = None,
                     progress: Callable | None = None) -> Clustering:
    """Groups of near-duplicates: connected components at a high cosine."""
    return discover(index, threshold, min_size=2, neighbours=neighbours, ef=ef,
                    method="components", progress=progress)

