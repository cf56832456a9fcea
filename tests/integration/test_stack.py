"""The local stack helper: starts real servers, answers, and leaves no process behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from twinstream.errors import StackStartError
from twinstream.probes import kafka_api_versions, redis_ping
from twinstream.stack import LocalStack

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists"; it is gone for our purposes once it has exited
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_stack_answers_and_stops_when_the_caller_raises(tmp_path):
    pids = []
    with pytest.raises(RuntimeError, match="boom"), LocalStack(workdir=tmp_path) as stack:
        pids = [p.pid for p in stack.started_services]
        assert kafka_api_versions("127.0.0.1", stack.broker.port) > 10
        redis_ping("127.0.0.1", stack.redis.port)
        raise RuntimeError("boom")
    assert len(pids) == 2
    assert wait_gone(pids), "a server outlived the block that raised"


def test_servers_die_with_a_crashed_parent(tmp_path):
    """SIGKILL the Python process that started the stack: the kernel takes the servers too."""
    script = textwrap.dedent(f"""
        import sys, time
        from twinstream.stack import LocalStack
        stack = LocalStack(workdir={str(tmp_path)!r}).start()
        print(" ".join(str(p.pid) for p in stack.started_services), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_gone(pids), "servers were orphaned by a crashed parent"
    finally:
        parent.kill()


def test_a_server_that_cannot_start_gives_a_clear_error_with_its_log(tmp_path):
    stack = LocalStack(workdir=tmp_path)
    stack.redis.argv.append("--no-such-option")
    with pytest.raises(StackStartError) as info:
        stack.start()
    message = str(info.value)
    assert "redis exited" in message and "log tail" in message
    assert not stack.broker.running  # the half-started stack was stopped
