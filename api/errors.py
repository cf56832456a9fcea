"""Every failure becomes a JSON body ``{"error": code, "message": one line, "status": n}``.

The mapping from the project's exceptions to HTTP statuses lives here, once. A request the client
got wrong is a 4xx with a message it can act on; a service that is down is a 503; only a bug in
this code is a 500, and that one is logged with its traceback but never shown to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kafka.errors import KafkaError
from starlette.exceptions import HTTPException as StarletteHTTPException

from twinstream.errors import (
    ConfigError,
    ImageDecodeError,
    IndexMismatchError,
    IndexNotReadyError,
    InputError,
    ModelError,
    NotFoundError,
    OverloadedError,
    ServiceUnavailable,
    TooLargeError,
    TwinstreamError,
)
from twinstream.fields import printable

log = logging.getLogger("twinstream.api")


class ApiError(Exception):
    """An HTTP error raised by the API's own code, with the status and a one-line message."""

    def __init__(self, status: int, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers


def error_body(status: int, message: str, detail: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": _code(status), "message": _printable(message),
                            "status": status}
    if detail is not None:
        body["detail"] = _printable(detail)
    return body


def _printable(value: Any) -> Any:
    """Error bodies echo what the client sent (field names, ids): escape what could not be
    encoded as UTF-8 (a lone surrogate made the response itself fail and the connection drop)
    or would move a terminal's cursor."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def error_response(status: int, message: str, detail: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, detail), status_code=status, headers=headers)


def _code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def status_of(exc: TwinstreamError) -> int:
    """The HTTP status of one of the project's exceptions: the one place where the search
    service's errors (``index/service.py``) become HTTP."""
    if isinstance(exc, IndexNotReadyError):
        return 503  # no index yet: the server is not ready, the request may be fine
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, IndexMismatchError):
        return 409  # the model and the live index disagree: not the client's fault, not transient
    if isinstance(exc, (ServiceUnavailable, ModelError, ConfigError)):
        return 503
    if isinstance(exc, TooLargeError):
        return 413
    if isinstance(exc, ImageDecodeError):
        return 415 if exc.not_an_image else 400
    if isinstance(exc, InputError) and exc.field:
        return 422  # a field of the request is wrong: say which
    return 400


def response_for(exc: TwinstreamError) -> JSONResponse:
    status = status_of(exc)
    message = exc.message.splitlines()[0]
    field = getattr(exc, "field", None)
    detail = [{"field": field, "message": message}] if field and status == 422 else None
    headers = ({"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError)
               else None)
    return error_response(status, message, detail, headers)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    detail = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        detail.append({"field": where, "message": err.get("msg", "invalid")})
    first = detail[0] if detail else {"field": "", "message": "invalid request"}
    return f"{first['field'] or 'request'}: {first['message']}", detail


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.detail, exc.headers)

    @app.exception_handler(TwinstreamError)
    async def _twinstream_error(_request: Request, exc: TwinstreamError) -> JSONResponse:
        return response_for(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else _code(exc.status_code)
        return error_response(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, detail = _validation_detail(exc)
        return error_response(422, message, detail)

    @app.exception_handler(redis.RedisError)
    async def _redis_error(_request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis error: %s", exc)
        return error_response(503, f"Redis is unavailable: {type(exc).__name__}: {exc}")

    @app.exception_handler(KafkaError)
    async def _kafka_error(_request: Request, exc: KafkaError) -> JSONResponse:
        log.warning("kafka error: %s", exc)
        return error_response(503, f"Kafka is unavailable: {type(exc).__name__}")

    @app.exception_handler(UnicodeDecodeError)
    async def _not_utf8(_request: Request, exc: UnicodeDecodeError) -> JSONResponse:
        return error_response(400, "the request holds text that is not UTF-8")

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, exc: RecursionError) -> JSONResponse:
        return error_response(400, "the request body is nested too deeply")

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
