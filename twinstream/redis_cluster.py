"""A local Redis Cluster of Redis 8 masters on loopback, for tests and benchmarks of sharded
indexes (no replicas: not for production)."""

from __future__ import annotations

import tempfile
import time
import weakref
from pathlib import Path

from twinstream.errors import StackStartError
from twinstream.probes import redis_command
from twinstream.stack import LocalStack, free_port, redis_process
from twinstream.supervise import START_TIMEOUT_S, ServiceProcess

CLUSTER_SLOTS = 16384


class LocalRedisCluster:
    """``masters`` Redis 8 servers on loopback joined into a Redis Cluster, each serving an equal
    range of the 16384 slots. Every node is a ``redis_process``, so none outlives its caller.
    Use as a context manager or call ``stop``.
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
