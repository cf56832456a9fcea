"""Pure parts of the API, without services: limits, error mapping, settings."""

from __future__ import annotations

import asyncio
import json

import pytest

from api.errors import status_of
from api.limits import BodyLimitMiddleware, TimeoutMiddleware
from tests import imagegen
from twinstream.errors import (
    ConfigError,
    ImageDecodeError,
    IndexMismatchError,
    InputError,
    ModelError,
    NotFoundError,
    ServiceUnavailable,
)
from twinstream.settings import load_settings


def test_error_statuses():
    assert status_of(NotFoundError("x")) == 404
    assert status_of(IndexMismatchError("x")) == 409
    assert status_of(ServiceUnavailable("x")) == 503
    assert status_of(ModelError("x")) == 503
    assert status_of(ConfigError("x")) == 503
    assert status_of(InputError("x")) == 400
    assert status_of(ImageDecodeError("x")) == 400


@pytest.mark.parametrize(("name", "status"), [("text_file", 415), ("random_bytes", 415),
                                              ("truncated_png", 400), ("zero_bytes", 400)])
def test_upload_decoding_statuses(name, status):
    with pytest.raises(ImageDecodeError) as caught:
        _service().prepare(imagegen.hostile()[name], embed=False)
    assert status_of(caught.value) == status


def test_upload_decoding_accepts_what_workers_accept():
    for data in imagegen.unusual_but_valid().values():
        assert _service().prepare(data, embed=False, thumbnail=True).thumbnail


def _service():
    from dataclasses import replace

    from index.service import SearchService

    settings = load_settings({})
    return SearchService(replace(settings, worker=replace(settings.worker,
                                                          max_image_pixels=10_000_000)))


# --- the ASGI limits, driven directly ------------------------------------------------------------

async def _call(app, body_chunks, headers=()):
    """Run an ASGI app on one request; return (status, JSON body, bytes the app read)."""
    chunks = list(body_chunks)
    sent = []

    async def receive():
        if chunks:
            data = chunks.pop(0)
            return {"type": "http.request", "body": data, "more_body": bool(chunks)}
        await asyncio.sleep(3600)  # a client that never finishes

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


async def _reading_app(scope, receive, send):
    total = 0
    while True:
        message = await receive()
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"read": total}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_body_limit_refuses_by_declared_length_before_reading():
    app = BodyLimitMiddleware(_reading_app, max_bytes=10)
    status, body = asyncio.run(_call(app, [b"x" * 11], [(b"content-length", b"11")]))
    assert status == 413 and body["error"] == "request_entity_too_large"
    status, body = asyncio.run(_call(app, [b"x"], [(b"content-length", b"abc")]))
    assert status == 400


def test_body_limit_counts_chunks_without_a_length():
    app = BodyLimitMiddleware(_reading_app, max_bytes=10)
    assert asyncio.run(_call(app, [b"x" * 5, b"x" * 5])) == (200, {"read": 10})
    with pytest.raises(Exception, match="413"):  # the app's handler turns this into the 413
        asyncio.run(_call(app, [b"x" * 5, b"x" * 6]))


def test_timeout_answers_504_when_nothing_was_sent():
    app = TimeoutMiddleware(_reading_app, seconds=0.05)
    status, body = asyncio.run(_call(app, [b"x"] * 0))  # the body never comes
    assert status == 504 and "TWINSTREAM_API_REQUEST_TIMEOUT_S" in body["message"]


def test_api_settings_are_validated():
    assert load_settings({"TWINSTREAM_API_TOKEN": "t"}).api.token == "t"
    for name, value in [("TWINSTREAM_API_PORT", "0"), ("TWINSTREAM_API_MAX_UPLOAD_BYTES", "0"),
                        ("TWINSTREAM_API_REQUEST_TIMEOUT_S", "-1"), ("TWINSTREAM_API_MAX_K", "0")]:
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})
