"""``twinstream serve``: the HTTP search API and its web page."""

from __future__ import annotations

from twinstream.cli.main import add_command


def register(subparsers) -> None:
    add_command(subparsers, "serve", serve,
                "HTTP search API and web page (search, recognise, verify, enroll, ingest)",
                settings=("api.host", "api.port", "api.token_file", "model.path",
                          "model.threads", "model.providers", "redis.url", "redis.index",
                          "kafka.bootstrap", "kafka.topic"))


def serve(args, settings, out) -> int:
    from dataclasses import replace

    from api.app import create_app
    from api.server import bind, is_loopback, run
    from twinstream.runtime import Encoder

    encoder = None
    if settings.model.path:
        # One image per request, requests embedded concurrently: one intra-op thread each is
        # fastest, and it leaves no idle onnxruntime threads spin-waiting on the cores Redis
        # needs (bench/api_bench.py measured index queries 5-8x slower with the default pool).
        # An explicit --threads / TWINSTREAM_MODEL_THREADS still wins.
        one_thread = replace(settings, model=replace(settings.model,
                                                     threads=settings.model.threads or 1))
        encoder = Encoder.from_settings(one_thread)
    else:
        out.warn("no model (--model or TWINSTREAM_MODEL_PATH): searching by image, recognise, "
                 "verify and enroll answer 503; search by vector or id works")
    app = create_app(settings, encoder)
    host, port = settings.api.host, settings.api.port
    if not app.state.token and not is_loopback(host):
        out.warn(f"listening on {host} without a token: anyone who reaches it can ingest, "
                 "enroll and delete; set --token-file FILE (or TWINSTREAM_API_TOKEN)")
    sock = bind(host, port)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    out.result({"url": url, "model_version": encoder.version if encoder else None,
                "index": settings.redis.index},
               f"twinstream API on {url} (docs at {url}docs); Ctrl-C stops it")
    run(app, sock, quiet=out.quiet or out.json_mode)
    out.info("stopped")
    return 0
