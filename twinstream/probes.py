"""Wire-level probes of the two services, without their client libraries.

Kafka ApiVersions and Redis PING / one command over a plain socket, so that the production health
check (``docker/healthcheck.py``) and the local stack need neither kafka-python nor redis-py, and
``twinstream/`` stays within numpy/pillow/onnxruntime/stdlib. Each raises ``OSError`` or
``ConnectionError`` when the server does not answer as it should.
"""

from __future__ import annotations

import socket
import struct


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
            sock.sendall(encode_command("AUTH", password))
            answer = sock.recv(256)
            if not answer.startswith(b"+OK"):
                raise ConnectionError(f"AUTH refused: {answer.strip()!r}")
        sock.sendall(encode_command("PING"))
        answer = sock.recv(256)
    if not answer.startswith(b"+PONG"):
        raise ConnectionError(f"PING answered {answer.strip()!r}")


def redis_command(host: str, port: int, *args: object, timeout_s: float = 5.0) -> bytes | int:
    """One command over a fresh connection; the reply as bytes (status or bulk) or an int.

    Enough RESP for cluster set-up (CLUSTER ADDSLOTSRANGE / MEET / INFO) and for tests that must
    talk to a Redis without a client library.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(encode_command(*(str(a) for a in args)))
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


def http_ok(host: str, port: int, path: str = "/", timeout_s: float = 2.0) -> None:
    """Any HTTP answer below 500 from ``path`` (the S3 stand-in answers 200 to its root)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        status = sock.recv(64).split(b" ", 2)
    if len(status) < 2 or not status[1].isdigit() or int(status[1]) >= 500:
        raise ConnectionError(f"HTTP answered {b' '.join(status)[:40]!r}")


def encode_command(*args: str) -> bytes:
    """A command in RESP, the Redis wire format."""
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
