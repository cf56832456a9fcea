"""Discovering identities on the session's real Redis 8: clusters from the vector set's own
neighbour search, the ``cluster`` attribute, near-duplicates, labelling a cluster as an identity,
and the CLI's answers (an empty index included)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from index.clusters import cluster_id, set_attributes
from index.identities import Identities
from index.service import SearchService
from index.store import VectorIndex
from tests.index_data import card, clustered, normalise
from twinstream.calibration import prototype
from twinstream.cli import main
from twinstream.errors import InputError, NotFoundError

pytestmark = [pytest.mark.integration]
GROUPS = 8


def fill(client, name, shards=1, n=160, seed=0):
    """``n`` items around ``GROUPS`` centres (cosine ~0.9 inside a group, ~0 across); the
    card's pair threshold (0.8) separates them. Returns the index and the true groups."""
    vectors, truth = clustered(n, dim=24, clusters=GROUPS, spread=0.35, seed=seed)
    index = VectorIndex.for_model(client, name, card(threshold=0.8), "noquant", shards=shards)
    ids = [f"item-{i:04d}" for i in range(n)]
    index.upsert([(i, v, {"source": "cam1", "n": k}) for k, (i, v) in
                  enumerate(zip(ids, vectors, strict=True))])
    groups = {frozenset(i for i, t in zip(ids, truth, strict=True) if t == g)
              for g in np.unique(truth)}
    return index, groups, dict(zip(ids, vectors, strict=True))


def service(settings):
    return SearchService(replace(settings, redis=replace(settings.redis, ef=0)))


@pytest.mark.parametrize("shards", [1, 3])
def test_clusters_are_the_true_groups(client, settings, shards):
    _, groups, _ = fill(client, settings.redis.index, shards=shards)
    found = service(settings).clusters()
    assert "pair threshold" in found.threshold_reason and found.warning is None
    assert {frozenset(c.members) for c in found.clustering.clusters} == groups
    assert found.clustering.items == 160 and found.clustering.method == "leiden-cpm"
    assert all(c.id == cluster_id(c.members) for c in found.clustering.clusters)


def test_write_sets_the_cluster_attribute_and_keeps_the_others(client, settings):
    index, groups, vectors = fill(client, settings.redis.index)
    outlier = normalise(-np.mean(list(vectors.values()), axis=0))
    index.upsert([("outlier", outlier, {"source": "cam2", "cluster": "c000000000000"})])
    svc = service(settings)
    found = svc.clusters(write=True)
    assert found.written == {"written": 161, "changed_meanwhile": 0, "gone": 0}
    for c in found.clustering.clusters:
        for member in c.members:
            attrs = index.attributes(member)
            assert attrs["cluster"] == c.id and attrs["source"] == "cam1" and "n" in attrs
    assert index.attributes("outlier") == {"source": "cam2"}  # the stale cluster id went
    hits = index.search(vectors["item-0000"], k=200,
                        filter=f'.cluster == "{index.attributes("item-0000")["cluster"]}"')
    assert {h.id for h in hits} in groups  # filters can use it
    assert svc.clusters(write=True).written["written"] == 0  # nothing changed: nothing written


def test_an_item_changed_meanwhile_is_not_overwritten(client, settings):
    index, _, vectors = fill(client, settings.redis.index, n=20)
    before = json.dumps({"source": "cam1", "n": 0}, sort_keys=True)
    index.upsert([("item-0000", vectors["item-0000"], {"source": "cam9"})])  # a worker's update
    outcome = set_attributes(index, [("item-0000", before, {"source": "cam1", "cluster": "x"}),
                                     ("gone-id", "", {"cluster": "x"})])
    assert outcome == {"item-0000": "changed_meanwhile", "gone-id": "gone"}
    assert index.attributes("item-0000") == {"source": "cam9"}


def test_unlabeled_only_leaves_labelled_items_out(client, settings):
    index, groups, vectors = fill(client, settings.redis.index)
    labelled = sorted(next(iter(groups)))
    index.upsert([(i, vectors[i], {"label": "known"}) for i in labelled])
    found = service(settings).clusters(unlabeled_only=True)
    assert found.clustering.items == 160 - len(labelled)
    assert {frozenset(c.members) for c in found.clustering.clusters} == \
        groups - {frozenset(labelled)}
    everyone = service(settings).clusters()
    known = next(c for c in everyone.clustering.clusters if labelled[0] in c.members)
    assert known.labels == {"known": len(labelled)}


def test_near_duplicates_are_grouped_and_nothing_else(client, settings):
    index, _, vectors = fill(client, settings.redis.index)
    original = vectors["item-0007"]
    nudged = normalise(original + 0.01 * np.random.default_rng(1).normal(size=24))
    index.upsert([("copy-a", original, {}), ("copy-b", nudged, {})])
    _, found = service(settings).duplicates()
    assert [set(c.members) for c in found.clusters] == [{"item-0007", "copy-a", "copy-b"}]
    assert found.method == "connected-components"


def test_labelling_a_cluster_enrolls_its_members_as_one_identity(client, settings):
    index, _, vectors = fill(client, settings.redis.index)
    svc = service(settings)
    chosen = next(c for c in svc.clusters().clustering.clusters)
    with pytest.raises(InputError, match="not cluster"):
        svc.label_cluster(chosen.id, "ann", ids=chosen.members[:-1])  # not what was listed
    with pytest.raises(NotFoundError, match="no cluster c0123456789ab"):
        svc.label_cluster("c0123456789ab", "ann")
    done = svc.label_cluster(chosen.id, "ann", ids=chosen.members)
    assert sorted(done.ids) == sorted(chosen.members) and done.references == chosen.size
    identity = Identities(index).get("ann")
    assert identity.references == chosen.size
    expected = prototype(np.stack([vectors[m] for m in chosen.members]))
    assert float(Identities(index).prototype("ann") @ expected) > 0.9999
    for member in chosen.members:
        attrs = index.attributes(member)
        assert attrs["label"] == "ann" and attrs["cluster"] == chosen.id
        assert attrs["source"] == "cam1"  # the rest is kept
    # labelled now, so the next unlabeled-only clustering leaves them out
    rest = svc.clusters(unlabeled_only=True).clustering
    assert not any(set(c.members) & set(chosen.members) for c in rest.clusters)
    # and without ids the clusters are computed again to find the members
    other = rest.clusters[0]
    again = svc.label_cluster(other.id, "bob", unlabeled_only=True)
    assert sorted(again.ids) == sorted(other.members)


def test_cli_cluster_and_duplicates(client, settings, capsys):
    fill(client, settings.redis.index)
    flags = ["--redis-url", settings.redis.url, "--index", settings.redis.index]
    assert main(["cluster", *flags, "--json", "--min-size", "3"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert len(body["clusters"]) == GROUPS and body["items"] == 160
    assert body["threshold"] == 0.8 and "pair threshold" in body["threshold_reason"]
    assert main(["cluster", *flags, "--show", "2", "--write"]) == 0
    text = capsys.readouterr().out
    assert f"{GROUPS} cluster(s)" in text and "wrote the 'cluster' attribute of 160" in text
    assert "... 6 more" in text
    assert main(["duplicates", *flags]) == 0
    assert "0 group(s) of near-duplicates" in capsys.readouterr().out


def test_cli_refuses_an_empty_index_and_bad_options_in_one_line(client, settings, capsys):
    VectorIndex.for_model(client, settings.redis.index, card(threshold=0.8), "noquant")
    flags = ["--redis-url", settings.redis.url, "--index", settings.redis.index]
    for args, code, words in [([], NotFoundError.exit_code, "is empty: nothing to cluster"),
                              (["--threshold", "2"], 2, "threshold must be a cosine"),
                              (["--min-size", "0"], 2, "min size must be")]:
        assert main(["cluster", *flags, *args]) == code
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert main(["cluster", "--redis-url", settings.redis.url, "--index", "never-made"]) == 5
    assert "does not exist yet" in capsys.readouterr().err
