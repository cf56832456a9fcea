"""``twinstream serve``: the HTTP search API and its web page."""

from __future__ import annotations

from twinstream.cli import add_command


def register(subparsers) -> None:
    add_command(subparsers, "serve", serve,
                "HTTP search API and web page (search, recognise, verify, enroll, ingest)",
                settings=("api.host", "api.port", "api.token_file", "model.path",
                          "model.threads", "redis.url", "redis.index", "kafka.bootstrap",
                          "kafka.topic"))


def serve(args, settings, out) -> int:
    from api.server import serve as run_server

    return run_server(settings, out)
