"""The FastAPI application: endpoints, the web page, limits, metrics, CORS, error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware

from api.errors import install_error_handlers
from api.ingest import StreamWriter
from api.limits import BodyLimitMiddleware, TimeoutMiddleware
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import blocking, router
from index.service import SearchService
from twinstream import __version__
from twinstream.errors import ConfigError
from twinstream.runtime import Encoder
from twinstream.settings import ApiSettings, Settings

STATIC = Path(__file__).parent / "static"


def api_token(settings: ApiSettings) -> str:
    """The bearer token write endpoints need: the setting, else the first line of the token
    file (a Docker or Kubernetes secret); empty: no token."""
    if settings.token or not settings.token_file:
        return settings.token
    try:
        token = Path(settings.token_file).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API token file {settings.token_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from exc
    if not token or not token[0].strip():
        raise ConfigError(f"the API token file {settings.token_file} is empty")
    return token[0].strip()


def create_app(settings: Settings, encoder: Encoder | None = None) -> FastAPI:
    """The app for ``settings``; ``encoder`` is the loaded model (None: vector search only)."""
    metrics = ApiMetrics()
    if encoder is not None:
        metrics.model.labels(encoder.version).set(1)
    service = SearchService(settings, encoder,
                            observe=lambda stage, s: metrics.stage.labels(stage).observe(s))
    writer = StreamWriter(settings.kafka, service)
    middleware = [  # outermost first: metrics see the 413s and 504s the others answer
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(TimeoutMiddleware, seconds=settings.api.request_timeout_s),
        Middleware(BodyLimitMiddleware, max_bytes=settings.api.max_upload_bytes),
    ]
    origins = [o.strip() for o in settings.api.cors_origins.split(",") if o.strip()]
    if origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=origins,
                                     allow_methods=["GET", "POST", "DELETE"],
                                     allow_headers=["Authorization", "Content-Type"]))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await blocking(writer.close)  # flushes the producer
        await blocking(service.close)

    app = FastAPI(
        title="twinstream", version=__version__, middleware=middleware, lifespan=lifespan,
        description="Search images by example, recognise and verify them, and feed the "
                    "index. Write endpoints need `Authorization: Bearer <token>` when the "
                    "server has TWINSTREAM_API_TOKEN set.")
    app.state.service = service
    app.state.stream = writer
    app.state.metrics = metrics
    app.state.token = api_token(settings.api)
    install_error_handlers(app)
    app.include_router(router)
    _add_operational_routes(app, service, metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_operational_routes(app: FastAPI, service: SearchService, metrics: ApiMetrics) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The process is up and answering (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Redis reachable, model loaded and the live index present and built by that model."""
        ready, checks = await blocking(service.readiness)
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus(_request: Request) -> Response:
        """Prometheus metrics in the text exposition format."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)
