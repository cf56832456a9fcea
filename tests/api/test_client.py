"""The Python client (``twinstream.client``) against the real server: every route it wraps, the
typed results it returns, and the API's errors as the project's exception classes."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import httpx
import pytest

from tests import imagegen
from tests.api.conftest import running_server
from twinstream import errors
from twinstream.client import (
    ApiError,
    ApiNotFoundError,
    ApiOverloadedError,
    ApiUnavailableError,
    BadRequestError,
    Client,
    Enrollment,
    Hit,
    InvalidRequestError,
    NotAnImageError,
    Queued,
    Recognition,
    SearchResult,
    UnauthorizedError,
)
from twinstream.messages import content_id
from twinstream.stack import free_port
from worker.consumer import Worker

pytestmark = pytest.mark.integration


@pytest.fixture
def client(api):
    with Client(api.url) as c:
        yield c


@pytest.fixture
def write_client(write_api):
    with Client(write_api.url) as c:
        yield c


# --- search ------------------------------------------------------------------------------------

def test_search_by_path_bytes_and_open_file_finds_the_image_itself_first(client, gallery,
                                                                          tmp_path):
    image_id, path = gallery.first_of("red_circle")
    with path.open("rb") as handle:
        answers = [client.search(path, k=5), client.search(str(path), k=5),
                   client.search(path.read_bytes(), k=5), client.search(handle, k=5)]
    for result in answers:
        assert isinstance(result, SearchResult) and result.k == 5 and len(result.hits) == 5
        top = result.hits[0]
        assert isinstance(top, Hit) and top.id == image_id and top.score > 0.999
        assert top.attributes["label"] == "red_circle"
        assert result.model_version == result.index.version
        assert set(result.timings_ms) == {"decode_embed", "index_query"}
    assert len({tuple(h.id for h in r.hits) for r in answers}) == 1  # one answer, four inputs


def test_search_results_are_the_raw_api_answer_typed(client, api, gallery):
    _, path = gallery.first_of("blue_triangle")
    raw = api.client.post("/search", files={"image": ("q.png", path.read_bytes())},
                          data={"k": "7"}).json()
    typed = client.search(path, k=7)
    assert [(h.id, h.score, h.probability, h.attributes, h.thumbnail_url) for h in typed.hits] == [
        (h["id"], h["score"], h["probability"], h["attributes"], h["thumbnail_url"])
        for h in raw["hits"]]
    assert typed.index.dim == raw["index"]["dim"] and typed.index.name == raw["index"]["name"]


def test_search_by_vector_and_by_id(client, api, gallery, encoder):
    image_id, path = gallery.first_of("green_rectangle")
    vector = encoder.embed_bytes([path.read_bytes()]).vectors[0]
    by_vector = client.search_vector(vector, k=3)  # a numpy array
    assert by_vector.hits[0].id == image_id
    assert client.search_vector([float(x) for x in vector], k=3).hits[0].id == image_id
    like = client.search_like(image_id, k=4)
    assert len(like.hits) == 4 and image_id not in {h.id for h in like.hits}  # itself left out
    raw = api.client.post("/search", json={"id": image_id, "k": 4}).json()
    assert [h.id for h in like.hits] == [h["id"] for h in raw["hits"]]


def test_search_filter_keeps_only_matching_items(client, gallery):
    _, path = gallery.first_of("red_circle")
    result = client.search(path, k=20, filter='.label == "blue_rectangle"')
    assert result.filter == '.label == "blue_rectangle"' and result.hits
    assert {h.attributes["label"] for h in result.hits} == {"blue_rectangle"}


# --- recognition -------------------------------------------------------------------------------

def test_recognize_names_the_identity_with_its_probability_and_threshold(client, api, gallery):
    _, path = gallery.first_of("red_triangle")
    answer = client.recognize(path)
    assert isinstance(answer, Recognition)
    assert answer.best.label == "red_triangle" and answer.hits[0] == answer.best
    assert answer.known == (answer.score >= answer.threshold)  # the session's model is tiny
    assert answer.label == ("red_triangle" if answer.known else "unknown")
    assert answer.threshold_reason and answer.gallery_size == len(gallery.labels)
    assert answer.probability is None or 0.0 <= answer.probability <= 1.0
    raw = api.client.post("/recognize", files={"image": ("q.png", path.read_bytes())}).json()
    assert (answer.label, answer.score, answer.probability, answer.threshold,
            answer.threshold_reason, [h.label for h in answer.hits]) == (
        raw["label"], raw["score"], raw["probability"], raw["threshold"],
        raw["threshold_reason"], [h["label"] for h in raw["hits"]])
    sure = client.recognize(path, threshold=-1.0)  # every identity passes: the nearest wins
    assert sure.known and sure.label == "red_triangle"


def test_recognize_passes_threshold_and_target_fpir_to_the_server(client, gallery):
    _, path = gallery.first_of("red_triangle")
    default = client.recognize(path)
    strict = client.recognize(path, target_fpir=0.001)
    assert strict.threshold >= default.threshold and strict.threshold_reason != \
        default.threshold_reason
    fixed = client.recognize(path, threshold=0.9999999, k=2)
    assert fixed.threshold == pytest.approx(0.9999999) and len(fixed.hits) <= 2
    assert fixed.label == "unknown" and not fixed.known  # nothing passes that cut


def test_verify_says_same_and_different(client, gallery):
    a_id, a = gallery.first_of("red_circle")
    other = next(p for i, (p, lab) in gallery.items.items() if lab == "red_circle" and i != a_id)
    _, b = gallery.first_of("blue_rectangle")
    same = client.verify(a, other)
    different = client.verify(a, b)
    assert same.same and not different.same and same.score > different.score
    assert client.verify(a, b, threshold=-1.0).threshold == -1.0


# --- enroll and identities (a server with an index of its own) ---------------------------------

def test_enroll_several_references_then_list_show_recognise_and_remove(write_client, gallery):
    circles = [p for p, label in gallery.items.values() if label == "blue_circle"]
    refs, probe = [p.read_bytes() for p in circles[:3]], circles[3]
    done = write_client.enroll(refs, "carol", attributes={"team": "door"})
    assert isinstance(done, Enrollment) and done.label == "carol" and done.references == 3
    assert done.ids == [content_id(r) for r in refs] and done.id == done.ids[0]
    again = write_client.enroll(refs[0], "carol")  # one image, enrolled before: a no-op
    assert again.references == 3

    listed = {i.label: i for i in write_client.identities().identities}
    assert listed["carol"].references == 3
    detail = write_client.identity("carol")
    assert sorted(detail.reference_ids) == sorted(done.ids)
    assert write_client.item(done.ids[1]).attributes["team"] == "door"

    assert write_client.recognize(probe, threshold=0.5).label == "carol"  # not enrolled itself
    removed = write_client.remove_identity("carol")
    assert sorted(removed.removed_references) == sorted(done.ids)
    with pytest.raises(ApiNotFoundError) as caught:
        write_client.identity("carol")
    assert isinstance(caught.value, errors.NotFoundError) and caught.value.status == 404


# --- items -------------------------------------------------------------------------------------

def test_item_with_its_vector_and_its_thumbnail(client, gallery, encoder):
    image_id, _ = gallery.first_of("green_circle")
    item = client.item(image_id)
    assert item.id == image_id and item.vector is None
    assert item.attributes["label"] == "green_circle"
    with_vector = client.item(image_id, vector=True)
    assert len(with_vector.vector) == encoder.card.embedding_dim
    assert client.thumbnail(image_id)[:2] == b"\xff\xd8"  # a JPEG


def test_ingest_then_delete_through_a_worker(write_api, write_client):
    image = imagegen.encode(imagegen.gradient(48, seed=601))
    image_id = content_id(image)
    worker = Worker(write_api.settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        queued = write_client.ingest(image, label="fresh", attributes={"camera": "c7"})
        assert queued == Queued([image_id], write_api.settings.kafka.topic)
        item = eventually(lambda: write_client.item(image_id))
        assert item.attributes["label"] == "fresh" and item.attributes["camera"] == "c7"
        deleted = write_client.delete(image_id)
        assert deleted.id == image_id and deleted.indexed
        gone = eventually(lambda: _raises(ApiNotFoundError, write_client.item, image_id))
        assert gone.status == 404
    finally:
        worker.stop_event.set()
        thread.join(timeout=30)
    assert worker.stats.indexed == 1 and worker.stats.deleted == 1


def eventually(probe, timeout_s: float = 30.0):
    """``probe()``'s first answer that is not an exception, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return probe()
        except (ApiError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _raises(cls, fn, *args):
    try:
        fn(*args)
    except cls as exc:
        return exc
    raise AssertionError(f"{fn.__name__}{args} did not raise {cls.__name__} yet")


# --- errors ------------------------------------------------------------------------------------

def test_the_apis_errors_are_the_projects_exception_classes(client, gallery):
    _, path = gallery.first_of("red_circle")
    png = path.read_bytes()
    cases = [
        (lambda: client.item("no-such-id"), ApiNotFoundError, errors.NotFoundError, 404),
        (lambda: client.search(png, k=0), InvalidRequestError, errors.InputError, 422),
        (lambda: client.search(b"plain text"), NotAnImageError, errors.ImageDecodeError, 415),
        (lambda: client.search(png[:200]), BadRequestError, errors.InputError, 400),
        (lambda: client.search_like("no-such-id"), ApiNotFoundError, errors.NotFoundError, 404),
    ]
    for call, api_class, project_class, status in cases:
        with pytest.raises(api_class) as caught:
            call()
        exc = caught.value
        assert isinstance(exc, project_class) and exc.status == status
        assert exc.message and "\n" not in exc.message and exc.error
        assert exc.exit_code == project_class.exit_code  # the CLI's exit code for it
    with pytest.raises(InvalidRequestError) as caught:
        client.search(png, k=0)
    assert caught.value.field == "k" and caught.value.detail


def test_a_missing_token_is_unauthorized_and_the_right_one_writes(api_settings, encoder, gallery):
    secured = replace(api_settings, api=replace(api_settings.api, token="t0ken"),
                      kafka=replace(api_settings.kafka, topic=api_settings.kafka.topic + "-cl"))
    image = imagegen.encode(imagegen.gradient(32, seed=777))
    with running_server(secured, encoder) as server:
        with Client(server.url) as anonymous, pytest.raises(UnauthorizedError) as caught:
            anonymous.enroll(image, "mallory")
        assert caught.value.status == 401 and isinstance(caught.value, errors.ConfigError)
        with Client(server.url, token="t0ken") as trusted:
            assert trusted.enroll(image, "trent").references == 1
            assert trusted.remove_identity("trent").removed_references == [content_id(image)]


def test_a_full_decode_budget_is_an_overloaded_error_with_retry_after(api_settings, encoder,
                                                                      gallery):
    settings = replace(api_settings, api=replace(api_settings.api, decode_concurrency=1))
    _, path = gallery.first_of("red_circle")
    with running_server(settings, encoder) as server, Client(server.url) as client:
        budget = server.app.state.service.budget
        budget.wait_s = 0.1
        with budget.admit(1):  # the only decode slot is taken: the next upload cannot wait
            assert budget.in_use()[0] == 1
            with pytest.raises(ApiOverloadedError) as caught:
                client.search(path)
        exc = caught.value
        assert isinstance(exc, errors.OverloadedError) and exc.status == 503
        assert exc.retry_after_s == 1
        assert client.search(path).hits  # room again: served


def test_an_unreachable_server_is_service_unavailable():
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(ApiUnavailableError) as caught:
            client.search(b"png")
        assert isinstance(caught.value, errors.ServiceUnavailable)
        assert caught.value.exit_code == 69 and "cannot reach" in caught.value.message
        assert client.healthy() is False


def test_health_and_readiness(client, gallery):
    assert client.healthy() is True
    ready = client.ready()
    assert ready.ready is True and ready.checks


def test_a_client_can_bring_its_own_httpx_client(api, gallery):
    with httpx.Client(base_url=api.url, timeout=10) as http:
        client = Client(http=http)
        assert client.search(gallery.first_of("red_circle")[1], k=1).hits
        client.close()  # not ours to close
        assert not http.is_closed
