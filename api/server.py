"""Run the API under uvicorn until SIGINT/SIGTERM (``twinstream serve``)."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket

from twinstream.errors import ConfigError

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
                          "(pick another --port or TWINSTREAM_API_PORT)") from exc
    sock.set_inheritable(True)
    return sock


def run(app, sock: socket.socket, quiet: bool = False) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGINT/SIGTERM."""
    import uvicorn

    level = logging.WARNING if quiet else logging.INFO
    config = uvicorn.Config(app, log_level=level, access_log=level <= logging.INFO,
                            timeout_keep_alive=5, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            server_header=False)
    _server_class()(config).run(sockets=[sock])


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
