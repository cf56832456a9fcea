"""The Python client without a server: its error mapping (every status the API documents) and
that importing it loads nothing of the server (torch, onnxruntime, numpy, api, worker, index)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from twinstream import errors
from twinstream.client import (
    ApiNotFoundError,
    ApiOverloadedError,
    ApiTimeoutError,
    ApiUnavailableError,
    BadRequestError,
    InvalidRequestError,
    ModelMismatchError,
    NotAnImageError,
    PayloadTooLargeError,
    ServerError,
    UnauthorizedError,
    error_from_response,
)


def answer(status: int, message: str = "one line", headers: dict | None = None,
           detail=None) -> httpx.Response:
    body = {"error": "code", "message": message, "status": status}
    if detail is not None:
        body["detail"] = detail
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(("status", "api_class", "project_class", "exit_code"), [
    (400, BadRequestError, errors.InputError, 2),
    (401, UnauthorizedError, errors.ConfigError, 2),
    (404, ApiNotFoundError, errors.NotFoundError, 5),
    (409, ModelMismatchError, errors.IndexMismatchError, 4),
    (413, PayloadTooLargeError, errors.TooLargeError, 2),
    (415, NotAnImageError, errors.ImageDecodeError, 2),
    (422, InvalidRequestError, errors.InputError, 2),
    (503, ApiUnavailableError, errors.ServiceUnavailable, 69),
    (504, ApiTimeoutError, errors.ServiceUnavailable, 69),
    (500, ServerError, errors.InternalError, 70),
    (418, BadRequestError, errors.InputError, 2),  # an undocumented 4xx: the client's fault
    (502, ServerError, errors.InternalError, 70),
])
def test_each_status_becomes_the_matching_project_error(status, api_class, project_class,
                                                        exit_code):
    exc = error_from_response(answer(status, "what went wrong"))
    assert type(exc) is api_class and isinstance(exc, project_class)
    assert exc.status == status and exc.message == "what went wrong" == str(exc)
    assert exc.exit_code == exit_code and exc.error == "code"


def test_a_503_with_retry_after_is_overloaded_and_keeps_the_delay():
    exc = error_from_response(answer(503, "busy", headers={"Retry-After": "3"}))
    assert isinstance(exc, ApiOverloadedError) and isinstance(exc, errors.OverloadedError)
    assert exc.retry_after_s == 3
    assert not isinstance(error_from_response(answer(503)), ApiOverloadedError)


def test_a_422_names_its_field_and_keeps_the_detail():
    detail = [{"field": "k", "message": "must be 1..1000"}]
    exc = error_from_response(answer(422, "k: must be 1..1000", detail=detail))
    assert exc.field == "k" and exc.detail == detail
    assert not error_from_response(answer(415)).field
    assert error_from_response(answer(415)).not_an_image


def test_a_body_that_is_not_the_apis_json_still_gives_a_one_line_error():
    exc = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(exc, ServerError) and exc.message == "HTTP 502 Bad Gateway"
    exc = error_from_response(httpx.Response(404, json=["not", "an", "object"]))
    assert isinstance(exc, ApiNotFoundError) and exc.message == "HTTP 404 Not Found"


def test_importing_the_client_loads_nothing_of_the_server():
    blocked = ["torch", "onnxruntime", "numpy", "redis", "kafka", "PIL", "fastapi", "api",
               "worker", "index", "training", "export"]
    code = (
        "import importlib.abc, sys\n"
        f"BLOCKED = {blocked!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import twinstream.client\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
