"""docker/healthcheck.py, the images' HEALTHCHECK: healthy only when what the container needs
answers, with a one-line reason otherwise. The worker check runs against the session's real broker
and Redis 8, and against a password-protected Redis of its own; the API check against a small
HTTP server on loopback.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.unit.test_deploy_checkers import REPO, load_script_module
from twinstream.stack import free_port, redis_process

healthcheck = load_script_module(REPO / "docker" / "healthcheck.py")


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really a model, but the check only needs the file")
    return path


def run(capsys, image: str, environ: dict[str, str]) -> tuple[int, str]:
    code = healthcheck.main([image], environ)
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


def test_bootstrap_servers_are_parsed_like_the_clients_do():
    assert healthcheck.bootstrap_servers("kafka:9092, b2:19092,[::1]:9093,plainhost") == [
        ("kafka", 9092), ("b2", 19092), ("::1", 9093), ("plainhost", 9092)]
    assert healthcheck.bootstrap_servers("") == []


def test_worker_is_healthy_when_model_broker_and_redis_answer(capsys, stack, model):
    environ = {**stack.env(), "TWINSTREAM_MODEL_PATH": str(model)}
    code, text = run(capsys, "worker", environ)
    assert code == 0, text
    assert text.startswith("healthy:") and "kafka" in text and "redis" in text


@pytest.mark.parametrize(("change", "reason"), [
    ({"TWINSTREAM_MODEL_PATH": "/nonexistent/model.onnx"}, "is missing or empty"),
    ({"TWINSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:{port}"}, "Kafka does not answer"),
    ({"TWINSTREAM_KAFKA_BOOTSTRAP": ""}, "TWINSTREAM_KAFKA_BOOTSTRAP is not set"),
    ({"TWINSTREAM_REDIS_URL": "redis://127.0.0.1:{port}/0"}, "cannot reach Redis"),
    ({"TWINSTREAM_WORKER_BACH": "3"}, "unknown setting TWINSTREAM_WORKER_BACH"),
])
def test_worker_is_unhealthy_with_the_reason(capsys, stack, model, change, reason):
    port = free_port()  # nothing listens there
    environ = {**stack.env(), "TWINSTREAM_MODEL_PATH": str(model),
               **{k: v.format(port=port) for k, v in change.items()}}
    code, text = run(capsys, "worker", environ)
    assert code == 1
    assert text.startswith("unhealthy:") and reason in text, text
    assert "\n" not in text  # one line for `docker inspect`


def test_worker_check_uses_the_redis_password(capsys, stack, model, tmp_path):
    server = redis_process(tmp_path, password="s3cret").start()
    try:
        base = {**stack.env(), "TWINSTREAM_MODEL_PATH": str(model)}
        good = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert run(capsys, "worker", {**base, "TWINSTREAM_REDIS_URL": good})[0] == 0
        code, text = run(capsys, "worker", {**base, "TWINSTREAM_REDIS_URL": good.replace(
            "s3cret", "wrong")})
        assert code == 1 and "credentials" in text, text
    finally:
        server.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_api_check_asks_the_api_own_port(capsys, status, healthy):
    handler = type("Handler", (_Handler,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, text = run(capsys, "api", {"TWINSTREAM_API_PORT": str(server.server_port)})
    finally:
        server.shutdown()
        server.server_close()
    assert (code == 0) is healthy, text
    if not healthy:
        assert "answered 503" in text


def test_api_check_fails_when_nothing_listens(capsys):
    code, text = run(capsys, "api", {"TWINSTREAM_API_PORT": str(free_port())})
    assert code == 1 and "/healthz" in text


def test_train_check_imports_torch(capsys):
    code, text = run(capsys, "train", {})
    assert code == 0 and "torch" in text


def test_the_health_check_imports_the_wire_probe_and_not_the_local_stack():
    """The production image runs this check every few seconds: it needs the probe, not the code
    that starts and supervises local servers."""
    import subprocess
    import sys

    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "print(' '.join(m for m in sys.modules if m.startswith('twinstream')))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "docker" / "healthcheck.py")],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    assert "twinstream.probes" in out
    assert not {"twinstream.stack", "twinstream.supervise", "twinstream.redis_cluster"} & set(out)
