"""Every endpoint and every error of the HTTP API, over real HTTP, against real Redis 8 + broker."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from urllib.parse import quote

import pytest

from index.store import VectorIndex, connect
from tests import imagegen
from tests.api.conftest import running_server, unique_settings
from twinstream.messages import content_id
from twinstream.stack import free_port
from worker.consumer import Worker

pytestmark = pytest.mark.integration


def upload(data: bytes, name: str = "query.png", field: str = "image") -> dict:
    return {field: (name, data, "application/octet-stream")}


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] and body["message"]
    return body


# --- search ------------------------------------------------------------------------------------

def test_search_by_image_finds_the_image_itself_first(api, gallery):
    image_id, path = gallery.first_of("red_circle")
    r = api.client.post("/search", files=upload(path.read_bytes()), data={"k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 5 and len(body["hits"]) == 5
    top = body["hits"][0]
    assert top["id"] == image_id and top["score"] > 0.999
    assert top["attributes"]["label"] == "red_circle"
    assert body["model_version"] == body["index"]["version"]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert set(body["timings_ms"]) == {"decode_embed", "index_query"}
    assert "decode_embed;dur=" in r.headers["server-timing"]
    thumb = api.client.get(top["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG


def test_search_filter_keeps_only_matching_items(api, gallery):
    _, path = gallery.first_of("red_circle")
    r = api.client.post("/search", files=upload(path.read_bytes()),
                        data={"k": "20", "filter": '.label == "blue_rectangle"'})
    assert r.status_code == 200, r.text
    labels = {h["attributes"]["label"] for h in r.json()["hits"]}
    assert labels == {"blue_rectangle"}
    assert r.json()["filter"] == '.label == "blue_rectangle"'


@pytest.mark.parametrize("expression", ['label == "a"', '.label == "a', "(.n > 1", ".n > 1 and",
                                        ".label @ 3", '.label == == "a"'])
def test_malformed_filters_are_422(api, gallery, expression):
    _, path = gallery.first_of("red_circle")
    r = api.client.post("/search", files=upload(path.read_bytes()), data={"filter": expression})
    body = assert_error(r, 422)
    assert "filter" in body["message"]


def test_search_by_vector_and_by_id(api, gallery, encoder):
    image_id, path = gallery.first_of("green_triangle")
    vector = encoder.embed_bytes([path.read_bytes()]).vectors[0]
    by_vector = api.client.post("/search", json={"vector": vector.tolist(), "k": 3})
    assert by_vector.status_code == 200, by_vector.text
    assert by_vector.json()["hits"][0]["id"] == image_id
    by_id = api.client.post("/search", json={"id": image_id, "k": 3,
                                             "filter": '.label == "green_triangle"'})
    assert by_id.status_code == 200, by_id.text
    # More like this: the item itself is left out (the CLI's behaviour, now the API's too).
    by_id_hits = by_id.json()["hits"]
    assert image_id not in [h["id"] for h in by_id_hits] and len(by_id_hits) == 3
    assert {h["attributes"]["label"] for h in by_id_hits} == {"green_triangle"}


@pytest.mark.parametrize(("form", "field"), [({"k": "0"}, "k"), ({"k": "1001"}, "k"),
                                             ({"k": "ten"}, "k"), ({"k": "2.5"}, "k")])
def test_bad_k_in_a_form_is_422(api, gallery, form, field):
    _, path = gallery.first_of("red_circle")
    body = assert_error(api.client.post("/search", files=upload(path.read_bytes()), data=form), 422)
    assert body["detail"][0]["field"] == field


@pytest.mark.parametrize("payload", [
    {"vector": [0.1] * 31},                    # wrong dimension
    {"vector": [0.0] * 32},                    # all zeros
    {"vector": [0.1] * 32, "k": 0},
    {"vector": [0.1] * 32, "k": 10**6},
    {"vector": [0.1] * 32, "id": "x"},         # both
    {},                                        # neither
    {"vector": "abc"},
    {"vector": [0.1] * 32, "colour": "red"},   # unknown field
    [1, 2, 3],
])
def test_bad_json_queries_are_422(api, gallery, payload):
    assert_error(api.client.post("/search", json=payload), 422)


def test_non_finite_vector_is_422(api, gallery):
    body = ("{\"vector\": [" + ", ".join(["NaN"] + ["0.1"] * 31) + "]}").encode()
    r = api.client.post("/search", content=body, headers={"content-type": "application/json"})
    assert_error(r, 422)


def test_unknown_id_and_bad_bodies(api, gallery):
    assert_error(api.client.post("/search", json={"id": "no-such-id"}), 404)
    assert_error(api.client.post("/search", content=b"{", headers={
        "content-type": "application/json"}), 400)
    assert_error(api.client.post("/search", content=b"k=3", headers={
        "content-type": "text/plain"}), 415)
    assert_error(api.client.post("/search"), 415)  # no body, no content type
    assert_error(api.client.post("/search", data={"k": "3"},
                                 files={"other": ("x", b"1", "text/plain")}), 422)  # no image


@pytest.mark.parametrize(("name", "status"), [("truncated_png", 400), ("truncated_jpeg", 400),
                                              ("zero_bytes", 400), ("random_bytes", 415),
                                              ("text_file", 415), ("decompression_bomb", 400)])
def test_hostile_uploads_get_4xx_with_a_reason(api, gallery, name, status):
    data = imagegen.hostile()[name]
    body = assert_error(api.client.post("/search", files=upload(data)), status)
    assert body["message"].startswith("image: ")


def test_unusual_but_valid_images_are_searched(api, gallery):
    for name, data in imagegen.unusual_but_valid().items():
        r = api.client.post("/search", files=upload(data, name), data={"k": "1"})
        assert r.status_code == 200, (name, r.text)
        assert len(r.json()["hits"]) == 1


def test_oversized_uploads_are_413(base_settings, stack, encoder, gallery, api_settings):
    small = replace(api_settings, api=replace(api_settings.api, max_upload_bytes=50_000))
    big = imagegen.encode(imagegen.gradient(200), "PNG")  # ~120 KB of noise
    assert len(big) > 50_000
    with running_server(small, encoder) as server:
        body = assert_error(server.client.post("/search", files=upload(big)), 413)
        assert "TWINSTREAM_API_MAX_UPLOAD_BYTES" in body["message"]

        def chunks():  # no Content-Length: the limit must count what arrives
            for start in range(0, len(big), 8192):
                yield big[start:start + 8192]

        r = server.client.post("/search", content=chunks(),
                               headers={"content-type": "application/json"})
        assert_error(r, 413)
        small_ok = imagegen.encode(imagegen.gradient(40), "PNG")
        assert server.client.post("/search", files=upload(small_ok)).status_code == 200


def test_a_slow_upload_times_out_with_504(encoder, gallery, api_settings):
    quick = replace(api_settings, api=replace(api_settings.api, request_timeout_s=0.5))

    def trickle():
        for _ in range(20):
            time.sleep(0.1)
            yield b" "

    with running_server(quick, encoder) as server:
        r = server.client.post("/search", content=trickle(),
                               headers={"content-type": "application/json"})
        body = assert_error(r, 504)
        assert "TWINSTREAM_API_REQUEST_TIMEOUT_S" in body["message"]
        assert server.client.get("/healthz").status_code == 200  # and the server is fine


# --- items -------------------------------------------------------------------------------------

def test_get_item_and_its_vector_and_thumbnail(api, gallery, encoder):
    image_id, path = gallery.first_of("blue_circle")
    r = api.client.get(f"/items/{image_id}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["attributes"] == {"label": "blue_circle", "source": path.name}
    assert body["vector"] is None and body["model_version"] == encoder.version
    with_vector = api.client.get(f"/items/{image_id}", params={"vector": "true"}).json()
    assert len(with_vector["vector"]) == encoder.dim
    assert math.isclose(sum(x * x for x in with_vector["vector"]), 1.0, rel_tol=1e-3)
    thumb = api.client.get(body["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/jpeg" and len(thumb.content) < 20_000


def test_unknown_items_are_404(api, gallery):
    assert_error(api.client.get("/items/no-such-id"), 404)
    assert_error(api.client.get("/items/no-such-id/thumbnail"), 404)
    assert_error(api.client.get("/no/such/route"), 404)
    assert_error(api.client.put("/search"), 405)


# --- recognition, verification, enrolment -------------------------------------------------------

def test_enroll_then_recognize_known_and_unknown(base_settings, stack, onnx_model, encoder,
                                                 gallery):
    settings = unique_settings(base_settings, stack, onnx_model)  # an empty index of its own
    red_id, red = gallery.first_of("red_circle")
    # Another red circle: the one the (tiny) session model finds closest to the reference.
    reds = [p for p, lab in gallery.items.values() if lab == "red_circle" and p != red]
    vectors = encoder.embed_bytes([red.read_bytes()] + [p.read_bytes() for p in reds]).vectors
    other_red = reds[int((vectors[1:] @ vectors[0]).argmax())]
    _, blue = gallery.first_of("blue_triangle")  # colour is what the session model tells apart
    with running_server(settings, encoder) as server:
        assert_error(server.client.post("/recognize", files=upload(red.read_bytes())), 503)
        r = server.client.post("/enroll", files=upload(red.read_bytes()),
                               data={"label": "  red_circle ", "attributes": '{"site": "door"}'})
        assert r.status_code == 201, r.text
        assert r.json() == {"id": red_id, "ids": [red_id], "label": "red_circle",
                            "references": 1, "model_version": encoder.version,
                            "index": settings.redis.index}
        again = server.client.post("/enroll", files=upload(red.read_bytes()),
                                   data={"label": "red_circle"})
        assert again.json()["references"] == 1  # the same image again changes nothing
        item = server.client.get(f"/items/{red_id}").json()
        assert item["attributes"]["label"] == "red_circle"
        assert item["attributes"]["site"] == "door"
        assert server.client.get(item["thumbnail_url"]).status_code == 200

        known = server.client.post("/recognize", files=upload(other_red.read_bytes()))
        assert known.status_code == 200, known.text
        assert known.json()["label"] == "red_circle" and known.json()["known"] is True
        best = known.json()["best"]
        assert best["label"] == "red_circle" and best["references"] == 1
        assert best["thumbnail_url"].endswith(f"/items/{red_id}/thumbnail")
        assert known.json()["gallery_size"] == 1 and known.json()["threshold_reason"]
        unknown = server.client.post("/recognize", files=upload(blue.read_bytes()))
        assert unknown.status_code == 200, unknown.text
        assert unknown.json()["label"] == "unknown" and unknown.json()["known"] is False
        assert unknown.json()["score"] < unknown.json()["threshold"]
        lenient = server.client.post("/recognize", files=upload(blue.read_bytes()),
                                     data={"threshold": "-1"})
        assert lenient.json()["label"] == "red_circle"

        for form in ({"threshold": "2"}, {"threshold": "nan"}, {"k": "0"}):
            assert_error(server.client.post("/recognize", files=upload(red.read_bytes()),
                                            data=form), 422)
        with_id = server.client.post("/enroll", files=upload(blue.read_bytes()),
                                     data={"label": "b", "id": "people/blue one.png"})
        assert with_id.status_code == 201, with_id.text
        slashed = server.client.get("/items/" + quote("people/blue one.png", safe=""))
        assert slashed.status_code == 200 and slashed.json()["attributes"]["label"] == "b"
        assert server.client.get(slashed.json()["thumbnail_url"]).status_code == 200


@pytest.mark.parametrize(("form", "status"), [
    ({"label": ""}, 422), ({"label": "   "}, 422), ({}, 422),
    ({"label": "x", "attributes": "{not json"}, 422), ({"label": "x", "attributes": "[1]"}, 422),
    ({"label": "x", "id": "bad\x01id"}, 422)])
def test_enroll_refuses_bad_fields(api, gallery, form, status):
    _, path = gallery.first_of("red_circle")
    assert_error(api.client.post("/enroll", files=upload(path.read_bytes()), data=form), status)


def test_enroll_refuses_bad_images(api, gallery):
    assert_error(api.client.post("/enroll", files=upload(b"not an image"),
                                 data={"label": "x"}), 415)


def test_verify_same_and_different(api, gallery):
    _, red = gallery.first_of("red_circle")
    _, blue = gallery.first_of("blue_rectangle")
    same = api.client.post("/verify", files={**upload(red.read_bytes(), field="a"),
                                             **upload(red.read_bytes(), field="b")})
    assert same.status_code == 200, same.text
    assert same.json()["same"] is True and same.json()["score"] > 0.999
    different = api.client.post("/verify", files={**upload(red.read_bytes(), field="a"),
                                                  **upload(blue.read_bytes(), field="b")})
    assert different.json()["same"] is False
    assert different.json()["score"] < different.json()["threshold"]
    forced = api.client.post("/verify", files={**upload(red.read_bytes(), field="a"),
                                               **upload(blue.read_bytes(), field="b")},
                             data={"threshold": "-1"})
    assert forced.json()["same"] is True and forced.json()["threshold"] == -1


def test_verify_errors(api, gallery):
    _, red = gallery.first_of("red_circle")
    png = red.read_bytes()
    assert_error(api.client.post("/verify", files=upload(png, field="a")), 422)
    body = assert_error(api.client.post("/verify", files={**upload(png, field="a"),
                                                          **upload(b"junk", field="b")}), 415)
    assert body["message"].startswith("b: ")
    assert_error(api.client.post("/verify", files={**upload(png, field="a"),
                                                   **upload(png[:300], field="b")}), 400)
    assert_error(api.client.post("/verify", files={**upload(png, field="a"),
                                                   **upload(png, field="b")},
                                 data={"threshold": "1.5"}), 422)


# --- ingest and delete, through the broker and a real worker ----------------------------------

def test_ingest_then_delete_through_a_worker(api, api_settings, gallery):
    settings = api_settings
    image = imagegen.encode(imagegen.gradient(48, seed=99))
    image_id = content_id(image)
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        r = api.client.post("/ingest", files=upload(image, "new.png"),
                            data={"label": "fresh", "attributes": '{"camera": "c1"}'})
        assert r.status_code == 202, r.text
        assert r.json() == {"ids": [image_id], "topic": settings.kafka.topic, "status": "queued"}
        item = wait_for(lambda: api.client.get(f"/items/{image_id}"), 200)
        assert item.json()["attributes"]["label"] == "fresh"
        assert item.json()["attributes"]["camera"] == "c1"
        assert item.json()["attributes"]["source"] == "api"
        assert api.client.get(item.json()["thumbnail_url"]).status_code == 200

        r = api.client.delete(f"/items/{image_id}")
        assert r.status_code == 202, r.text
        assert r.json()["indexed"] is True
        wait_for(lambda: api.client.get(f"/items/{image_id}"), 404)
    finally:
        worker.stop_event.set()
        thread.join(timeout=30)
    assert worker.stats.indexed == 1 and worker.stats.deleted == 1


def wait_for(request, status: int, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        response = request()
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.2)


def published_images(api) -> float:
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith('twinstream_api_published_total{kind="image"}'):
            return float(line.split()[-1])
    return 0.0


def test_ingest_refuses_bad_input(api, gallery):
    _, red = gallery.first_of("red_circle")
    png = red.read_bytes()
    assert_error(api.client.post("/ingest", files=upload(b"plain text")), 415)
    assert_error(api.client.post("/ingest", files=upload(png[:200])), 400)
    assert_error(api.client.post("/ingest", data={"label": "x"}), 422)
    assert_error(api.client.post("/ingest", files=upload(png), data={"attributes": "[]"}), 422)
    assert_error(api.client.post("/ingest", files=[("image", ("a.png", png)),
                                                   ("image", ("b.png", png))],
                                 data={"id": "one"}), 422)
    published = published_images(api)
    assert_error(api.client.post("/ingest", files=[("image", ("a.png", png)),
                                                   ("image", ("b.txt", b"text"))]), 415)
    assert published_images(api) == published  # all or nothing: the good one was not sent
    assert_error(api.client.delete("/items/" + quote("bad\x01id", safe="")), 422)


def test_write_endpoints_need_the_token_when_one_is_set(api_settings, encoder, gallery):
    secured = replace(api_settings, api=replace(api_settings.api, token="s3cret"),
                      kafka=replace(api_settings.kafka, topic=api_settings.kafka.topic + "-auth"))
    image = imagegen.encode(imagegen.gradient(32, seed=7))
    with running_server(secured, encoder) as server:
        c = server.client
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/ingest", files=upload(image), headers=headers)
            assert_error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
            assert_error(c.post("/enroll", files=upload(image), data={"label": "x"},
                                headers=headers), 401)
            assert_error(c.delete("/items/x", headers=headers), 401)
        good = {"Authorization": "Bearer s3cret"}
        assert c.post("/ingest", files=upload(image), headers=good).status_code == 202
        assert c.delete(f"/items/{content_id(image)}", headers=good).status_code == 202
        # reads stay open
        assert c.post("/search", files=upload(image), data={"k": "1"}).status_code == 200


# --- service state: no model, no index, another model, Redis down --------------------------------

def test_without_a_model_images_are_503_and_vectors_work(api_settings, gallery, encoder):
    no_model = replace(api_settings, model=replace(api_settings.model, path=""))
    image_id, path = gallery.first_of("red_circle")
    with running_server(no_model, None) as server:
        c = server.client
        body = assert_error(c.post("/search", files=upload(path.read_bytes())), 503)
        assert "--model" in body["message"]
        assert_error(c.post("/verify", files={**upload(path.read_bytes(), field="a"),
                                              **upload(path.read_bytes(), field="b")}), 503)
        like = c.post("/search", json={"id": image_id, "k": 1})  # needs no model
        assert like.status_code == 200 and len(like.json()["hits"]) == 1
        assert like.json()["hits"][0]["id"] != image_id  # more like it, itself left out
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["model"]["ok"] is False
        assert ready.json()["checks"]["redis"]["ok"] is True


def test_index_of_another_model_is_409_and_not_ready(base_settings, stack, onnx_model, encoder):
    settings = unique_settings(base_settings, stack, onnx_model)
    other = replace(encoder.card, version="0123456789abcdef")
    VectorIndex.for_model(connect(settings.redis.url), settings.redis.index, other, "noquant")
    image = imagegen.encode(imagegen.gradient(32))
    with running_server(settings, encoder) as server:
        body = assert_error(server.client.post("/search", files=upload(image)), 409)
        assert "0123456789abcdef" in body["message"]
        assert_error(server.client.post("/enroll", files=upload(image), data={"label": "x"}), 409)
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["index"]["ok"] is False


def test_missing_index_and_unreachable_redis_are_503(base_settings, stack, onnx_model, encoder):
    settings = unique_settings(base_settings, stack, onnx_model)
    image = imagegen.encode(imagegen.gradient(32))
    with running_server(settings, encoder) as server:
        assert_error(server.client.post("/search", files=upload(image)), 503)
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["index"]["ok"] is False
    down = replace(settings, redis=replace(settings.redis, url=f"redis://127.0.0.1:{free_port()}"))
    with running_server(down, encoder) as server:
        body = assert_error(server.client.post("/search", files=upload(image)), 503)
        assert "Redis" in body["message"]
        assert_error(server.client.get("/items/x"), 503)
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"]["ok"] is False
        assert server.client.get("/healthz").json() == {"status": "ok"}


# --- operations, documents, CORS, the page --------------------------------------------------------

def test_health_ready_and_metrics(api, gallery, encoder):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    index = ready.json()["checks"]["index"]
    assert index["ok"] and index["count"] >= len(gallery.items)
    assert index["version"] == encoder.version
    _, path = gallery.first_of("red_circle")
    api.client.post("/search", files=upload(path.read_bytes()))
    api.client.post("/search", json={"vector": [1.0]})
    metrics = api.client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'twinstream_api_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'twinstream_api_requests_total{method="POST",route="/search",status="422"}' in text
    assert 'twinstream_api_stage_seconds_count{stage="decode_embed"}' in text
    assert f'twinstream_api_model_info{{version="{encoder.version}"}} 1.0' in text


def test_openapi_documents_every_endpoint(api):
    schema = api.client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [("/search", "post"), ("/items/{item_id}", "get"),
                         ("/items/{item_id}/thumbnail", "get"), ("/items/{item_id}", "delete"),
                         ("/recognize", "post"), ("/verify", "post"), ("/enroll", "post"),
                         ("/ingest", "post"), ("/healthz", "get"), ("/readyz", "get"),
                         ("/metrics", "get")]:
        assert method in paths[path], (path, method)
    content = paths["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert api.client.get("/docs").status_code == 200


def test_cors_is_off_unless_configured(api, api_settings, encoder, gallery):
    origin = {"Origin": "https://example.org"}
    assert "access-control-allow-origin" not in api.client.get("/healthz", headers=origin).headers
    allowed = replace(api_settings, api=replace(api_settings.api,
                                                cors_origins="https://example.org"))
    with running_server(allowed, encoder) as server:
        r = server.client.get("/healthz", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://example.org"
        other = server.client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_the_page_and_its_assets_are_served(api):
    page = api.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("static/style.css", "static/app.js"):
        assert asset in page.text
        assert api.client.get("/" + asset).status_code == 200
