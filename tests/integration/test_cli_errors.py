"""Bad input and missing services: one clear line on stderr, non-zero exit, nothing half-written."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.imagegen import encode, gradient
from twinstream.stack import free_port, redis_process

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEBIAN_REDIS = "/usr/bin/redis-server"  # Debian's 7.0: no vector sets (installed by make test)


def twinstream(*args, env=None, timeout=120):
    import tempfile

    clean_env = {"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()}
    clean_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "twinstream", *args], cwd=ROOT, env=clean_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, code, *needles):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("twinstream: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "q.png"
    path.write_bytes(encode(gradient()))
    return path


@pytest.fixture(scope="module")
def redis7(tmp_path_factory):
    proc = redis_process(tmp_path_factory.mktemp("redis7"), binary=DEBIAN_REDIS).start()
    yield proc
    proc.stop()


def test_unreachable_redis_names_the_url(image, onnx_model):
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = twinstream("query", str(image), "--model", str(onnx_model), "--redis-url", url)
    assert_one_line_error(result, 69, "cannot reach Redis", url)


def test_redis_without_vector_sets_is_refused(image, onnx_model, redis7):
    url = f"redis://127.0.0.1:{redis7.port}/0"
    result = twinstream("query", str(image), "--model", str(onnx_model), "--redis-url", url)
    assert_one_line_error(result, 69, "needs Redis >= 8.0 vector sets", "7.0")


def test_unreachable_broker_names_the_address(image):
    address = f"127.0.0.1:{free_port()}"
    result = twinstream("ingest", str(image), "--bootstrap", address, "--json")
    assert_one_line_error(result, 69, "cannot reach Kafka", address)
    assert '"exit_code": 69' in result.stdout  # --json gets a parseable error too


def test_unreadable_model_file(image, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not an onnx file")
    result = twinstream("query", str(image), "--model", str(bad), "--redis-url", "redis://x:1")
    assert_one_line_error(result, 3, "cannot load ONNX model")


def test_model_without_a_card_is_explained(tmp_path, onnx_model):
    import onnx

    proto = onnx.load(str(onnx_model))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    result = twinstream("model-card", str(bare))
    assert_one_line_error(result, 3, "no twinstream model card")


def test_training_on_a_single_class_writes_nothing(tmp_path):
    data = tmp_path / "data" / "only"
    data.mkdir(parents=True)
    for i in range(3):
        (data / f"{i}.png").write_bytes(encode(gradient(seed=i)))
    out = tmp_path / "run"
    result = twinstream("train", "--data", str(tmp_path / "data"), "--out", str(out))
    assert_one_line_error(result, 2, "at least 2")
    assert not out.exists()


def test_unknown_setting_variable_is_a_config_error(image):
    result = twinstream("query", str(image), env={"TWINSTREAM_REDIS_ULR": "redis://x"})
    assert_one_line_error(result, 2, "TWINSTREAM_REDIS_URL")


def test_missing_image_file(tmp_path):
    result = twinstream("ingest", str(tmp_path / "nope.png"), "--bootstrap", "127.0.0.1:1")
    assert_one_line_error(result, 2, "no such file")


# --- issue 11: input that used to end in "internal error ... please report it" (exit 70) -------

def test_non_utf8_filter_and_id_are_clear_errors(image, onnx_model, stack):
    # argv bytes that are not UTF-8 reach Python as lone surrogates.
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    redis_url = stack.redis_url
    for args in (("query", "--id", f"x{bad}"), ("query", str(image), "--filter", f'.a == "{bad}"'),
                 ("query", str(image), "--index", f"i{bad}")):
        result = twinstream(*args, "--model", str(onnx_model), "--redis-url", redis_url)
        assert result.returncode == 2, (args, result.stderr)
        assert_one_line_error(result, 2)
        assert "internal error" not in result.stderr


def test_a_bootstrap_that_is_not_host_port_is_a_config_error(image):
    for bootstrap in ("not a host:::", "host:99999", "host", "a:1,b:x"):
        result = twinstream("ingest", str(image), "--bootstrap", bootstrap)
        assert_one_line_error(result, 2, "host:port")


def test_a_card_with_a_wrong_type_is_a_model_error(tmp_path, onnx_model, image):
    import json

    import onnx

    proto = onnx.load(str(onnx_model))
    for prop in proto.metadata_props:
        if prop.key == "twinstream.embedding_dim":
            prop.value = json.dumps("abc")
    bad = tmp_path / "bad-card.onnx"
    onnx.save(proto, str(bad))
    assert_one_line_error(twinstream("model-card", str(bad)), 3, "embedding_dim")
    assert_one_line_error(twinstream("embed", str(image), "--model", str(bad)), 3)


def test_a_model_whose_graph_was_edited_under_its_card_is_refused(tmp_path, onnx_model, image):
    """Before the fix the version was never recomputed on load: vectors of another embedding
    space went into the live index under the old version's name."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_model))
    weight = proto.graph.initializer[0]
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += np.float32(0.5)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))  # the old card, version included, kept as it was
    result = twinstream("embed", str(image), "--model", str(edited))
    assert_one_line_error(result, 3, "changed after export")
    result = twinstream("worker", "--model", str(edited), "--bootstrap", "127.0.0.1:1",
                        "--redis-url", "redis://127.0.0.1:1", "--processes", "1", "-q")
    assert_one_line_error(result, 3, "changed after export")
