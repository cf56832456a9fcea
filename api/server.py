"""Run the API under uvicorn until SIGINT/SIGTERM (``twinstream serve``)."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket

from twinstream.errors import ConfigError
from twinstream.output import Output
from twinstream.settings import Settings

# Long enough for in-flight searches to finish, short enough for a rolling restart.
GRACEFUL_SHUTDOWN_S = 10


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            # uvicorn re-raises the SIGTERM/SIGINT it caught once it has shut down, so the process
            # would end as "killed by a signal"; a service that stopped as asked exits 0.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for open requests
            self.should_exit = True

    return Server


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear error line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # with proto 0 every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                          "(pick another --port or TWINSTREAM_API_PORT)") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def serve(settings: Settings, out: Output) -> int:
    import uvicorn

    from api.app import create_app
    from twinstream.runtime import Encoder

    encoder = None
    if settings.model.path:
        # One image per request, requests embedded concurrently: one intra-op thread each is
        # fastest, and it leaves no idle onnxruntime threads spin-waiting on the cores Redis
        # needs (bench/api_bench.py measured index queries 5-8x slower with the default pool).
        # An explicit --threads / TWINSTREAM_MODEL_THREADS still wins.
        encoder = Encoder(settings.model.path, threads=settings.model.threads or 1,
                          max_pixels=settings.worker.max_image_pixels)
    else:
        out.warn("no model (--model or TWINSTREAM_MODEL_PATH): searching by image, recognise, "
                 "verify and enroll answer 503; search by vector or id works")
    app = create_app(settings, encoder)
    host, port = settings.api.host, settings.api.port
    if not app.state.token and not _is_loopback(host):
        out.warn(f"listening on {host} without a token: anyone who reaches it can ingest, "
                 "enroll and delete; set --token-file FILE (or TWINSTREAM_API_TOKEN)")
    sock = bind(host, port)
    level = logging.WARNING if out.quiet or out.json_mode else logging.INFO
    config = uvicorn.Config(app, log_level=level, access_log=level <= logging.INFO,
                            timeout_keep_alive=5, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            server_header=False)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    out.result({"url": url, "model_version": encoder.version if encoder else None,
                "index": settings.redis.index},
               f"twinstream API on {url} (docs at {url}docs); Ctrl-C stops it")
    _server_class()(config).run(sockets=[sock])
    out.info("stopped")
    return 0
