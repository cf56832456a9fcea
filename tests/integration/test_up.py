"""``twinstream up``: the local stack as a command, until Ctrl-C, with no process left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinstream.probes import encode_command, kafka_api_versions, redis_ping

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start_up(tmp_path, *args: str, cwd=ROOT) -> tuple[subprocess.Popen, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWINSTREAM_")}
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "twinstream", "up", "--json", *args], cwd=cwd,
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


def test_up_restarts_a_server_that_dies_and_keeps_the_other_running(tmp_path):
    import socket

    proc, announced = start_up(tmp_path)
    try:
        kafka = address(announced["TWINSTREAM_KAFKA_BOOTSTRAP"])
        redis = address(announced["TWINSTREAM_REDIS_URL"])
        with socket.create_connection(redis) as sock:
            sock.sendall(encode_command("SHUTDOWN", "NOSAVE"))  # Redis goes away under `up`
        assert refuses(*redis)
        wait_answers(lambda: redis_ping(*redis), "Redis restarted on its port")
        assert kafka_api_versions(*kafka) > 10  # the broker was never touched
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        stderr = proc.stderr.read()
        assert "redis died" in stderr and "redis restarted" in stderr
        assert "Traceback" not in stderr
        assert refuses(*kafka) and refuses(*redis), "a server outlived `twinstream up`"
    finally:
        proc.kill()


def wait_answers(probe, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            probe()
            return
        except (OSError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}") from exc
            time.sleep(0.2)


@pytest.mark.slow
def test_up_data_dir_keeps_redis_across_crashes_and_restarts_and_topics_across_broker_crashes(
        tmp_path):
    from kafka.admin import NewTopic

    from twinstream.probes import redis_command
    from twinstream.settings import load_settings
    from worker.kafka_io import make_admin

    data = tmp_path / "data"
    proc, announced = start_up(tmp_path, "--data-dir", str(data))
    try:
        assert announced["data_dir"] == str(data) and "s3" in announced["broker_storage"]
        kafka = address(announced["TWINSTREAM_KAFKA_BOOTSTRAP"])
        redis = address(announced["TWINSTREAM_REDIS_URL"])
        redis_command(*redis, "SET", "kept", "yes")
        time.sleep(1.5)  # appendfsync everysec: on disk within a second
        kafka_settings = load_settings(
            {"TWINSTREAM_KAFKA_BOOTSTRAP": announced["TWINSTREAM_KAFKA_BOOTSTRAP"]}).kafka
        admin = make_admin(kafka_settings)
        admin.create_topics([NewTopic("kept-topic", 2, 1)])
        admin.close()

        for name in ("redis", "broker"):  # crashes, not polite stops
            os.kill(announced["pids"][name], signal.SIGKILL)
        wait_answers(lambda: redis_ping(*redis), "Redis restarted")
        wait_answers(lambda: kafka_api_versions(*kafka), "the broker restarted")
        assert redis_command(*redis, "GET", "kept") == b"yes"
        admin = make_admin(kafka_settings)
        assert "kept-topic" in admin.list_topics()  # the broker's storage outlived it
        admin.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert (data / "redis").is_dir() and any((data / "redis").rglob("*.aof"))

    again, announced_again = start_up(tmp_path, "--data-dir", str(data))
    try:
        assert address(announced_again["TWINSTREAM_REDIS_URL"]) == redis  # same ports
        assert redis_command(*redis, "GET", "kept") == b"yes"  # the AOF outlived `up`
        again.send_signal(signal.SIGINT)
        assert again.wait(30) == 0
    finally:
        again.kill()


def test_redis_aof_keeps_its_files_out_of_temporary_folders(tmp_path):
    proc, announced = start_up(tmp_path, "--redis-aof", cwd=tmp_path)
    try:
        assert announced["data_dir"] == "twinstream-data"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert any((tmp_path / "twinstream-data" / "redis").rglob("*.aof"))  # still there after exit


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
