"""Container health checks of the twinstream images: ``python healthcheck.py worker|api|train``.

Exit 0 when healthy, 1 with a one-line reason otherwise (Docker's HEALTHCHECK contract). The
settings are read the same way as by every twinstream command (``TWINSTREAM_*`` variables), so the
check looks at exactly the broker, Redis, model and port the container's process uses.

- worker: the model file is there, the Kafka broker answers (ApiVersions) and Redis answers with
  vector sets (the worker cannot do its job without any of them). Docker only reports this state
  (``docker compose ps``); it restarts nothing. A stuck-but-connected worker is not detected here:
  the worker's metrics endpoint (its lag and last-commit age) is the place for that.
- api: ``GET /healthz`` on the API's own port answers 200.
- train: torch imports (a broken CUDA or CPU build shows here rather than mid-job).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from twinstream.errors import TwinstreamError
from twinstream.probes import kafka_api_versions
from twinstream.settings import Settings, load_settings

TIMEOUT_S = 3.0


class Unhealthy(Exception):
    """One failed check; its message is the line Docker shows."""


def check_model(settings: Settings) -> str:
    path = Path(settings.model.path)
    if not settings.model.path:
        raise Unhealthy("TWINSTREAM_MODEL_PATH is not set")
    if not path.is_file() or path.stat().st_size == 0:
        raise Unhealthy(f"model file {path} is missing or empty")
    return f"model {path}"


def bootstrap_servers(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port,[v6::addr]:port`` -> [(host, port)]; Kafka's default port when none is given."""
    servers = []
    for item in filter(None, (part.strip() for part in bootstrap.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or "]" in port:  # no port, or an IPv6 literal without one
            host, port = item, "9092"
        servers.append((host.strip("[]"), int(port)))
    return servers


def check_kafka(settings: Settings) -> str:
    servers = bootstrap_servers(settings.kafka.bootstrap)
    if not servers:
        raise Unhealthy("TWINSTREAM_KAFKA_BOOTSTRAP is not set")
    errors = []
    for host, port in servers:  # one live bootstrap server is enough, as for the clients
        try:
            kafka_api_versions(host, port, timeout_s=TIMEOUT_S)
            return f"kafka {host}:{port}"
        except (OSError, ConnectionError) as exc:
            errors.append(f"{host}:{port} ({exc})")
    raise Unhealthy("Kafka does not answer: " + ", ".join(errors))


def check_redis(settings: Settings) -> str:
    from index.store import connect  # redis-py: TLS, ACL users and passwords as the worker has them

    try:
        connect(settings.redis.url, timeout_s=TIMEOUT_S).close()
    except TwinstreamError as exc:
        raise Unhealthy(exc.message) from exc
    return "redis"


def check_api(settings: Settings) -> str:
    url = f"http://127.0.0.1:{settings.api.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"{url}: {getattr(exc, 'reason', exc)}") from exc
    if status != 200:
        raise Unhealthy(f"{url} answered {status}")
    return f"api {url}"


def check_torch(settings: Settings) -> str:
    try:
        import torch
    except Exception as exc:  # ImportError, or a CUDA build whose libraries do not load
        raise Unhealthy(f"torch does not import: {exc}") from exc
    return f"torch {torch.__version__} (cuda: {torch.cuda.is_available()})"


CHECKS: dict[str, tuple[Callable[[Settings], str], ...]] = {
    "worker": (check_model, check_kafka, check_redis),
    "api": (check_api,),
    "train": (check_torch,),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="health check of a twinstream container")
    parser.add_argument("image", choices=sorted(CHECKS), help="which image's checks to run")
    return parser


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(os.environ if environ is None else environ)
        passed = [check(settings) for check in CHECKS[args.image]]
    except (Unhealthy, TwinstreamError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print("healthy: " + "; ".join(passed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
