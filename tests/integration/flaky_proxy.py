"""A TCP proxy in front of a real server that can misbehave on purpose: drop every connection,
swallow traffic without answering (clients time out), or refuse new connections. For tests of
code that must survive a flaky Redis or broker; the server behind it stays real."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from twinstream.stack import free_port


class FlakyProxy:
    """``mode``: "pass" (forward), "blackhole" (accept and read, never answer), "refuse" (close
    new connections at once). ``drop_all()`` cuts the connections that are open."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.port = free_port()
        self.mode = "pass"
        self._server = socket.create_server((host, self.port))
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            upstream = None
            if self.mode == "pass":
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket | None) -> None:
        ends = [client] + ([upstream] if upstream else [])
        try:
            while True:
                readable, _, _ = select.select(ends, [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if upstream is None or self.mode == "blackhole":
                        continue  # swallowed: the client waits for an answer that never comes
                    (upstream if sock is client else client).sendall(data)
        except (OSError, ValueError):  # closed under us by drop_all()
            return
        finally:
            for sock in ends:
                with contextlib.suppress(OSError):
                    sock.close()

    def drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                        sock.close()

    def close(self) -> None:
        self._closed = True
        self.drop_all()
        with contextlib.suppress(OSError):
            self._server.close()
