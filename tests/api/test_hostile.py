"""Issue 11 on the HTTP API: requests that used to answer 500 (and drop the keep-alive
connection), unbounded decoding memory, and trust boundaries. Real server, real Redis 8."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import replace

import pytest

from tests import imagegen
from tests.api.conftest import running_server, unique_settings

pytestmark = pytest.mark.integration

SURROGATE_JSON = '"x\\udc80"'  # valid JSON text for a string Python holds as a lone surrogate


def raw_request(server, method: str, path: str, body: bytes, content_type: str) -> bytes:
    """Send bytes exactly as given (httpx would refuse some of them) on a keep-alive connection,
    then a second, ordinary request on the same connection: both answers come back."""
    host, port = server.url.removeprefix("http://").split(":")
    first = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(first)
        answer = _read_response(sock)
        sock.sendall(second)
        answer += b"\n----\n" + _read_response(sock)
    return answer


def _read_response(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("body", [
    b'{"vector": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    ('{"id": ' + SURROGATE_JSON + ', "k": 3}').encode(),
    ('{"vector": [0.1], "filter": ".label == ' + SURROGATE_JSON.replace('"', '\\"') + '"}')
    .encode(),
    ('{"' + "\\udc80" + '": 1}').encode(),
    b'{"vector": [1e999, 1], "k": 3}',
    b'{"id": "x", "k": ' + b"9" * 5000 + b"}",
    b'{"id": "\xff\xfe", "k": 3}',
])
def test_hostile_json_bodies_get_a_4xx_and_the_connection_survives(api, gallery, body):
    """Before the fix: RecursionError and UnicodeEncodeError answered 500, and the surrogate
    in the error body broke the response itself, resetting the keep-alive connection."""
    answer = raw_request(api, "POST", "/search", body, "application/json")
    first, second = answer.split(b"\n----\n")
    assert 400 <= status_of(first) < 500, first[:300]
    error = json.loads(first.partition(b"\r\n\r\n")[2])
    assert error["status"] == status_of(first) and error["message"]
    assert status_of(second) == 200


def test_enroll_with_surrogates_nan_or_control_characters_is_422(api, gallery):
    image = imagegen.encode(imagegen.gradient(32, seed=5))
    cases = [
        {"label": "ok", "attributes": '{"x": NaN}'},
        {"label": "ok", "attributes": '{"x": ' + SURROGATE_JSON + "}"},
        {"label": "bad\x1b[2Jlabel"},
        {"label": "ok", "id": "a\tb"},
        {"label": "ok", "id": "x" * 600},
    ]
    for fields in cases:
        r = api.client.post("/enroll", files={"image": ("a.png", image)}, data=fields)
        assert r.status_code == 422, (fields, r.text)
        assert "\x1b" not in r.text and len(r.json()["message"]) < 300
    ingest = api.client.post("/ingest", files={"image": ("a.png", image)},
                             data={"attributes": '{"x": Infinity}'})
    assert ingest.status_code == 422, ingest.text


def test_long_and_invalid_ids_on_read_paths_are_not_echoed_in_full(api, gallery):
    long_id = "q" * 5000
    for path in (f"/items/{long_id}", f"/items/{long_id}/thumbnail"):
        r = api.client.get(path)
        assert r.status_code == 422, r.text
        assert len(r.text) < 600 and long_id not in r.text
    r = api.client.post("/search", json={"id": "q" * 700, "k": 2})
    assert r.status_code == 422 and len(r.text) < 600
    r = api.client.get("/items/a%1B%5B2Jb")  # ESC [2J in the path
    assert r.status_code in (404, 422) and "\x1b" not in r.text


def test_decoding_is_budgeted_and_a_full_budget_answers_503_with_retry_after(
        base_settings, stack, onnx_model, encoder, gallery, api_settings):
    """Before the fix: eight concurrent 6300x6300 PNGs (131 KB each) took the API to 2.6 GB.
    Here the budget fits one such image; the others wait briefly, then get 503 + Retry-After."""
    from PIL import Image

    big = imagegen.encode(Image.new("RGB", (2000, 2000), (200, 30, 30)))  # 4 Mpx in ~10 KB
    settings = replace(api_settings, api=replace(api_settings.api, decode_concurrency=1,
                                                 decode_pixel_budget=5_000_000))
    with running_server(settings, encoder) as server:
        service = server.app.state.service
        service.budget.wait_s = 0.2
        statuses: list[int] = []
        headers: list[str | None] = []

        def search() -> None:
            import httpx

            r = httpx.post(f"{server.url}/search", files={"image": ("b.png", big)}, timeout=60)
            statuses.append(r.status_code)
            headers.append(r.headers.get("retry-after"))

        threads = [threading.Thread(target=search) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(set(statuses)) <= [200, 503] and 200 in statuses and 503 in statuses
        assert all(h == "1" for s, h in zip(statuses, headers, strict=True) if s == 503)
        assert service.budget.in_use() == (0, 0)  # everything handed back


def test_the_token_file_guards_writes(base_settings, stack, onnx_model, encoder, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    settings = unique_settings(base_settings, stack, onnx_model)
    settings = replace(settings, api=replace(settings.api, token_file=str(token_file)))
    image = imagegen.encode(imagegen.gradient(32, seed=8))
    with running_server(settings, encoder) as server:
        denied = server.client.post("/enroll", files={"image": ("a.png", image)},
                                    data={"label": "x"})
        assert denied.status_code == 401
        allowed = server.client.post("/enroll", files={"image": ("a.png", image)},
                                     data={"label": "x"},
                                     headers={"Authorization": "Bearer s3cret-token"})
        assert allowed.status_code == 201, allowed.text
