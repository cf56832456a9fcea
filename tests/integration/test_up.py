"""``twinstream up``: the local stack as a command, until Ctrl-C, with no process left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinstream.stack import _resp, kafka_api_versions, redis_ping

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start_up(tmp_path) -> tuple[subprocess.Popen, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSTREAM_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "twinstream", "up", "--json"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def address(url: str) -> tuple[str, int]:
    host, port = url.split("://")[-1].split("/")[0].rsplit(":", 1)
    return host, int(port)


def refuses(host: str, port: int, deadline_s: float = 10) -> bool:
    import socket

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_up_serves_both_until_ctrl_c(tmp_path):
    proc, announced = start_up(tmp_path)
    try:
        kafka = address(announced["TWINSTREAM_KAFKA_BOOTSTRAP"])
        redis = address(announced["TWINSTREAM_REDIS_URL"])
        assert kafka_api_versions(*kafka) > 10
        redis_ping(*redis)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert refuses(*kafka) and refuses(*redis), "a server outlived `twinstream up`"
    finally:
        proc.kill()


def test_up_fails_loudly_when_a_server_dies(tmp_path):
    import socket

    proc, announced = start_up(tmp_path)
    try:
        kafka = address(announced["TWINSTREAM_KAFKA_BOOTSTRAP"])
        with socket.create_connection(address(announced["TWINSTREAM_REDIS_URL"])) as sock:
            sock.sendall(_resp("SHUTDOWN", "NOSAVE"))  # Redis goes away under `up`
        assert proc.wait(30) == 69
        stderr = proc.stderr.read()
        assert "twinstream: error: redis exited" in stderr and "Traceback" not in stderr
        assert refuses(*kafka), "the broker outlived the failed stack"
    finally:
        proc.kill()


def test_up_can_protect_redis_with_a_generated_password(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSTREAM_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "twinstream", "up", "--json",
                             "--redis-password"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = json.loads(proc.stdout.readline())["TWINSTREAM_REDIS_URL"]
        password = url.split("://:", 1)[1].split("@", 1)[0]
        assert len(password) >= 24
        host, port = address(url.replace(f":{password}@", ""))
        with pytest.raises(ConnectionError, match="NOAUTH"):
            redis_ping(host, port)  # without the password: refused
        redis_ping(host, port, password)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
