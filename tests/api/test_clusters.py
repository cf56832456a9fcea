"""Discovering identities over HTTP: GET /clusters, GET /duplicates, POST /clusters/{id}/label,
and the page's view of them in a real browser (Debian's Chromium). The index holds clustered
synthetic vectors with generated thumbnails (no model needed to cluster), on real Redis 8."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright

from index.store import VectorIndex, connect
from tests import imagegen
from tests.api.conftest import running_server, unique_settings
from tests.api.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.index_data import card, clustered, normalise
from twinstream.thumbnails import make_thumbnail

pytestmark = [pytest.mark.integration]
GROUPS = 5


def filled(base_settings, stack, n=60, groups=GROUPS):
    """Settings of a fresh index holding ``n`` unlabeled items around ``groups`` centres."""
    settings = unique_settings(base_settings, stack, None)
    vectors, truth = clustered(n, dim=24, clusters=groups, spread=0.35, seed=4)
    index = VectorIndex.for_model(connect(settings.redis.url), settings.redis.index,
                                  card(threshold=0.8), "noquant")
    ids = [f"face-{i:03d}" for i in range(n)]
    index.upsert([(i, v, {"source": "album"}) for i, v in zip(ids, vectors, strict=True)])
    index.put_thumbnails({i: make_thumbnail(imagegen.gradient(24, seed=int(t) + 1))
                          for i, t in zip(ids, truth, strict=True)})
    truth_sets = {frozenset(i for i, t in zip(ids, truth, strict=True) if t == g)
                  for g in range(groups)}
    return settings, index, truth_sets


@pytest.fixture(scope="module")
def cluster_server(base_settings, stack):
    settings, index, truth = filled(base_settings, stack)
    with running_server(settings, None) as server:
        yield server, index, truth


def test_clusters_come_as_rows_of_members_with_thumbnails(cluster_server):
    server, _, truth = cluster_server
    r = server.client.get("/clusters")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total_clusters"] == GROUPS and body["items"] == 60 and body["clustered"] == 60
    assert {frozenset(m["id"] for m in c["members"]) for c in body["clusters"]} == truth
    assert body["method"] == "leiden-cpm" and body["threshold"] == 0.8
    first = body["clusters"][0]
    assert first["cover"] == first["members"][0]
    thumb = server.client.get(first["cover"]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    limited = server.client.get("/clusters", params={"limit": 2, "min_size": 3}).json()
    assert len(limited["clusters"]) == 2 and limited["total_clusters"] == GROUPS


@pytest.mark.parametrize("params, field", [({"threshold": 2}, "threshold"),
                                           ({"min_size": 0}, "min_size"),
                                           ({"neighbours": 0}, "neighbours"),
                                           ({"threshold": "x"}, "threshold")])
def test_bad_cluster_options_are_422_naming_the_field(cluster_server, params, field):
    server, _, _ = cluster_server
    r = server.client.get("/clusters", params=params)
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_duplicates_lists_only_copies(cluster_server):
    server, index, _ = cluster_server
    assert server.client.get("/duplicates").json()["total_clusters"] == 0
    original = index.vector("face-000")
    index.upsert([("face-000-copy", normalise(original + 1e-3), {"source": "backup"})])
    try:
        body = server.client.get("/duplicates", params={"threshold": 0.99}).json()
        assert [sorted(m["id"] for m in c["members"]) for c in body["clusters"]] == \
            [["face-000", "face-000-copy"]]
        assert body["method"] == "connected-components"
    finally:
        index.delete(["face-000-copy"])


def test_labelling_a_cluster_makes_an_identity(base_settings, stack):
    settings, _, _ = filled(base_settings, stack, n=30, groups=3)
    with running_server(settings, None) as server:
        cluster = server.client.get("/clusters").json()["clusters"][0]
        ids = [m["id"] for m in cluster["members"]]
        r = server.client.post(f"/clusters/{cluster['id']}/label",
                               json={"label": "Ann", "ids": ids[:-1]})
        assert r.status_code == 422 and "not cluster" in r.json()["message"]
        assert server.client.post("/clusters/c0123456789ab/label",
                                  json={"label": "Ann"}).status_code == 404
        assert server.client.post("/clusters/nonsense/label",
                                  json={"label": "Ann"}).status_code == 422
        assert server.client.post(f"/clusters/{cluster['id']}/label",
                                  json={"label": " "}).status_code == 422
        server.app.state.token = "secret"
        try:
            assert server.client.post(f"/clusters/{cluster['id']}/label",
                                      json={"label": "Ann", "ids": ids}).status_code == 401
            r = server.client.post(f"/clusters/{cluster['id']}/label",
                                   json={"label": "Ann", "ids": ids},
                                   headers={"Authorization": "Bearer secret"})
        finally:
            server.app.state.token = ""
        assert r.status_code == 200, r.text
        assert sorted(r.json()["ids"]) == sorted(ids) and r.json()["references"] == len(ids)
        (identity,) = server.client.get("/identities").json()["identities"]
        assert identity["label"] == "Ann" and identity["references"] == len(ids)
        assert server.client.get(f"/items/{ids[0]}").json()["attributes"]["label"] == "Ann"
        rest = server.client.get("/clusters", params={"unlabeled_only": True}).json()
        assert rest["items"] == 30 - len(ids) and rest["total_clusters"] == 2


def test_the_python_client_lists_clusters_and_duplicates_and_labels_one(base_settings, stack):
    """twinstream.client against the real server: the typed clusters are the true groups, the
    same as the raw answer, and labelling one (members sent as listed) makes its identity."""
    from twinstream.client import ApiNotFoundError, Client, Cluster

    settings, index, truth = filled(base_settings, stack, n=30, groups=3)
    index.upsert([("copy-of-000", index.vector("face-000"), {"source": "copy"})])
    with running_server(settings, None) as server, Client(server.url) as client:
        found = client.clusters(unlabeled_only=True)
        raw = server.client.get("/clusters", params={"unlabeled_only": True}).json()
        assert [c.id for c in found.clusters] == [c["id"] for c in raw["clusters"]]
        assert found.method == "leiden-cpm" and found.total_clusters == 3 and found.items == 31
        assert all(isinstance(c, Cluster) and c.cover == c.members[0] for c in found.clusters)
        assert {frozenset(m.id for m in c.members) - {"copy-of-000"}
                for c in found.clusters} == truth
        copies = client.duplicates()
        assert [sorted(m.id for m in c.members) for c in copies.clusters] == \
            [["copy-of-000", "face-000"]]
        labelled = client.label_cluster(found.clusters[0], "Ann")
        assert sorted(labelled.ids) == sorted(m.id for m in found.clusters[0].members)
        assert labelled.references == len(labelled.ids) and labelled.skipped == []
        assert [i.label for i in client.identities().identities] == ["Ann"]
        with pytest.raises(ApiNotFoundError):
            client.label_cluster("c0123456789ab", "Bob")


def test_an_empty_index_is_404_with_one_line(base_settings, stack):
    settings = unique_settings(base_settings, stack, None)
    VectorIndex.for_model(connect(settings.redis.url), settings.redis.index, card(), "noquant")
    with running_server(settings, None) as server:
        r = server.client.get("/clusters")
        assert r.status_code == 404 and "empty: nothing to cluster" in r.json()["message"]


def test_readiness_names_the_provider_the_model_runs_on(api):
    checks = api.client.get("/readyz").json()["checks"]
    assert checks["model"]["provider"] == "CPUExecutionProvider"
    assert checks["model"]["providers"][-1] == "CPUExecutionProvider"


@pytest.mark.slow
def test_the_page_shows_clusters_as_rows_and_labels_one(base_settings, stack):
    settings, _, truth = filled(base_settings, stack, n=40, groups=4)
    ARTIFACTS.mkdir(exist_ok=True)
    with running_server(settings, None) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url + "/#clusters")
            rows = page.locator("[data-testid=cluster]")
            expect(rows).to_have_count(4)
            expect(page.get_by_test_id("clusters-summary")).to_contain_text("4 clusters")
            assert page.locator("#search-view").is_hidden()
            first = rows.first
            shown = first.locator(".thumbs img")
            assert shown.count() == min(12, len(max(truth, key=len)))
            page.wait_for_function(
                "[...document.querySelectorAll('.thumbs img')].every(i => i.complete)")
            widths = page.eval_on_selector_all(".thumbs img", "i => i.map(x => x.naturalWidth)")
            assert all(w > 0 for w in widths), widths
            cluster = first.get_attribute("data-cluster")
            first.get_by_test_id("cluster-label").fill("<b>Ann</b>")  # text, never markup
            first.get_by_role("button").click()
            expect(first.get_by_test_id("cluster-note")).to_contain_text("as “<b>Ann</b>”")
            page.screenshot(path=str(ARTIFACTS / "web-page-clusters.png"), full_page=True)
            members = server.client.get(f"/identities/{'<b>Ann</b>'}").json()
            assert members["references"] > 1
            listed = server.client.get("/clusters").json()["clusters"]
            assert next(c for c in listed if c["id"] == cluster)["labels"] == \
                {"<b>Ann</b>": members["references"]}
            page.click("[data-testid=clusters-tab]")  # the search view is one click away
            page.click("nav.views a[data-view=search]")
            expect(page.locator("#search-view")).to_be_visible()
        finally:
            browser.close()
