"""The pure half of discovering identities: the graph, its communities, the clusters' ids."""

from __future__ import annotations

import itertools

import pytest

from index.clusters import (
    _scores,
    build_graph,
    check_min_size,
    check_threshold,
    cluster_id,
    communities,
    components,
    default_resolution,
    is_unlabeled,
    modularity_communities,
    summarise,
)
from twinstream.errors import InputError

RESOLUTION = default_resolution(16)


def clique(nodes, weight=0.9):
    return [(a, b, weight) for a, b in itertools.combinations(nodes, 2)]


def two_cliques_and_a_bridge():
    """Nodes 0-5 and 6-11 are two dense groups; one borderline pair (5, 6) links them, as a
    look-alike links two people; node 12 is alone."""
    return build_graph(13, [*clique(range(6)), *clique(range(6, 12)), (5, 6, 0.71)])


def as_sets(groups):
    return sorted((frozenset(g) for g in groups), key=min)


def test_components_chain_two_groups_through_one_bridge():
    found = as_sets(components(two_cliques_and_a_bridge()))
    assert found == [frozenset(range(12)), frozenset({12})]


def test_leiden_cuts_the_bridge_and_keeps_each_group_whole():
    found = as_sets(communities(two_cliques_and_a_bridge(), RESOLUTION))
    assert found == [frozenset(range(6)), frozenset(range(6, 12)), frozenset({12})]


def test_leiden_never_joins_pieces_that_share_no_edge():
    graph = build_graph(6, [(0, 1, 0.9), (2, 3, 0.9), (4, 5, 0.9)])
    assert as_sets(communities(graph, RESOLUTION)) == [{0, 1}, {2, 3}, {4, 5}]


def test_a_seed_makes_the_communities_reproducible():
    graph = build_graph(40, [(a, b, 0.5 + ((a * 7 + b) % 5) / 10)
                             for a in range(40) for b in range(a + 1, 40) if (a * b) % 7 < 2])
    assert communities(graph, RESOLUTION, seed=3) == communities(graph, RESOLUTION, seed=3)


def test_an_edgeless_graph_is_all_singletons():
    assert communities(build_graph(3, []), RESOLUTION) == [[0], [1], [2]]


def ring_of_small_groups(groups=30, size=4):
    """``groups`` cliques of ``size`` (cosine 0.9), each tied to the next by one 0.6 pair."""
    edges = []
    for g in range(groups):
        first = g * size
        edges += clique(range(first, first + size))
        edges.append((first + size - 1, (first + size) % (groups * size), 0.6))
    return build_graph(groups * size, edges), [set(range(g * size, (g + 1) * size))
                                               for g in range(groups)]


def test_cpm_keeps_small_groups_that_modularity_merges():
    """Modularity's resolution limit: in a big sparse graph it cannot see small communities
    and merges neighbouring ones; CPM judges each group by its own density."""
    graph, truth = ring_of_small_groups()
    assert sorted(as_sets(communities(graph, RESOLUTION)), key=min) == truth
    assert len(modularity_communities(graph)) < len(truth)


def test_the_default_resolution_grows_with_the_neighbours():
    assert default_resolution(16) == pytest.approx(0.2)
    assert default_resolution(32) == pytest.approx(2 * default_resolution(16))


def test_repeated_pairs_keep_the_higher_weight_and_self_loops_go():
    graph = build_graph(3, [(0, 1, 0.8), (1, 0, 0.9), (2, 2, 1.0)])
    assert graph.ecount() == 1 and graph.es["weight"] == [0.9]


def test_clusters_by_size_members_by_centrality_small_ones_left_out():
    ids = [f"img{i:02d}" for i in range(13)]
    # img02 is the most similar to the rest of its group (repeated pairs keep the max weight)
    graph = build_graph(13, [*clique(range(6)), *[(2, j, 0.95) for j in (0, 1, 3, 4, 5)],
                             *clique(range(6, 12)), (5, 6, 0.71)])
    attributes = {"img00": {"label": "ann"}, "img01": {"label": "ann"}, "img02": {"label": ""}}
    found = summarise(graph, [list(range(6)), list(range(6, 12)), [12]], ids, min_size=2,
                      attributes=attributes)
    assert [c.size for c in found] == [6, 6]  # the singleton is below min_size
    first = next(c for c in found if "img00" in c.members)
    assert first.members[0] == "img02" == first.cover  # the most central one comes first
    assert first.labels == {"ann": 2}  # empty labels do not count
    assert first.cohesion == pytest.approx((5 * 0.95 + 10 * 0.9) / 15)  # edges inside only
    assert first.id == cluster_id(reversed(first.members))  # order does not matter


def test_cluster_ids_name_the_members():
    assert cluster_id(["a", "b"]) == cluster_id(["b", "a"]) != cluster_id(["a", "c"])
    assert len(cluster_id(["a"])) == 13 and cluster_id(["a"]).startswith("c")


def test_vsim_replies_of_both_shapes_become_cosines():
    assert _scores({b"a": 1.0, b"b": 0.75}) == [("a", 1.0), ("b", 0.5)]
    assert _scores([b"a", b"1", b"b", b"0.25"]) == [("a", 1.0), ("b", -0.5)]
    assert _scores(None) == []


def test_what_counts_as_unlabeled():
    assert is_unlabeled({}) and is_unlabeled({"label": " "}) and is_unlabeled({"label": None})
    assert not is_unlabeled({"label": "ann"})


@pytest.mark.parametrize("bad", [1.5, -2, float("nan")])
def test_thresholds_outside_cosine_are_refused(bad):
    with pytest.raises(InputError, match="threshold"):
        check_threshold(bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_min_size_must_be_a_whole_positive_number(bad):
    with pytest.raises(InputError, match="min size"):
        check_min_size(bad)
