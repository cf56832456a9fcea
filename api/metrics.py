"""Prometheus metrics of the API, in a registry of its own (one per app, so tests can build many).

Requests are labelled by route *template* (``/items/{item_id}``), never by raw path, so an
attacker cannot blow up the number of series with random URLs.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("twinstream_api_requests_total", "HTTP requests answered",
                                ("method", "route", "status"), registry=self.registry)
        self.latency = Histogram("twinstream_api_request_seconds", "Time to answer a request",
                                 ("method", "route"), buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.in_flight = Gauge("twinstream_api_requests_in_flight", "Requests being answered",
                               registry=self.registry)
        self.stage = Histogram("twinstream_api_stage_seconds",
                               "Time inside one step of a request: decode_embed, index_query",
                               ("stage",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model = Gauge("twinstream_api_model_info", "The loaded model (value 1)",
                           ("version",), registry=self.registry)
        self.published = Counter("twinstream_api_published_total",
                                 "Records published to the images topic (images, tombstones)",
                                 ("kind",), registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request, including those answered by other middleware."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
