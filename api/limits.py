"""Request limits as plain ASGI middleware: body size (413) and total time (504).

Both answer with the API's JSON error body. The body limit checks ``Content-Length`` before a
byte is read and also counts what arrives, so a chunked upload without a length cannot slip past.
The time limit covers the whole request, reading a slow client's upload included.
"""

from __future__ import annotations

import json

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body


async def send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return (f"request body larger than {self.max_bytes:,} bytes "
                "(TWINSTREAM_API_MAX_UPLOAD_BYTES)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await send_error(send, 413, self._too_large())
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing untouched and is
                    # turned into the JSON 413 by the app's handler.
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counting_receive, send)


class TimeoutMiddleware:
    def __init__(self, app: ASGIApp, seconds: float):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        with anyio.move_on_after(self.seconds) as deadline:
            await self.app(scope, receive, tracking_send)
        if deadline.cancelled_caught and not response_started:
            await send_error(send, 504, f"request took longer than {self.seconds:g} s "
                                        "(TWINSTREAM_API_REQUEST_TIMEOUT_S)")
