import pytest

from twinstream.errors import ConfigError
from twinstream.settings import load_settings, setting_specs, settings_table


def test_defaults_without_environment():
    s = load_settings({})
    assert s.kafka.topic == "images"
    assert s.kafka.dlq_topic == "images.dlq"
    assert s.worker.batch == 64
    assert s.redis.url == ""


def test_environment_is_typed_and_flags_win():
    env = {"TWINSTREAM_WORKER_BATCH": "48", "TWINSTREAM_KAFKA_TOPIC": "faces",
           "TWINSTREAM_REDIS_URL": "redis://h:1/0"}
    s = load_settings(env, {"worker.batch": "8", "redis.url": None})
    assert s.worker.batch == 8  # flag beats the variable
    assert s.kafka.topic == "faces"
    assert s.kafka.dlq_topic == "faces.dlq"
    assert s.redis.url == "redis://h:1/0"  # a flag left unset does not erase the variable


def test_unknown_variable_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="TWINSTREAM_REDIS_URL"):
        load_settings({"TWINSTREAM_REDIS_ULR": "redis://x"})


@pytest.mark.parametrize("env", [{"TWINSTREAM_WORKER_BATCH": "many"},
                                 {"TWINSTREAM_WORKER_BATCH": "0"},
                                 {"TWINSTREAM_WORKER_MAX_WAIT_MS": "-1"}])
def test_bad_values_are_refused(env):
    with pytest.raises(ConfigError):
        load_settings(env)


def test_every_setting_is_documented_in_the_table():
    table = settings_table()
    for spec in setting_specs():
        assert spec.help, spec.key
        assert f"`{spec.env}`" in table


def test_bootstrap_must_be_host_port_pairs():
    from twinstream.errors import ConfigError
    from twinstream.settings import load_settings

    for good in ("", "kafka:9092", "a:1,b:2", "[::1]:9092", "10.0.0.1:9092, 10.0.0.2:9092"):
        load_settings({"TWINSTREAM_KAFKA_BOOTSTRAP": good})
    for bad in ("not a host:::", "host", "host:0", "host:99999", "a:1,b:x", "http://a:1", "::1:9"):
        with pytest.raises(ConfigError, match="host:port"):
            load_settings({"TWINSTREAM_KAFKA_BOOTSTRAP": bad})


def test_settings_refuse_nan_and_undecodable_bytes():
    import os

    from twinstream.errors import ConfigError
    from twinstream.settings import load_settings

    with pytest.raises(ConfigError):
        load_settings({"TWINSTREAM_WORKER_SHUTDOWN_TIMEOUT_S": "nan"})
    with pytest.raises(ConfigError, match="xff"):
        load_settings({"TWINSTREAM_REDIS_INDEX": os.fsdecode(b"idx\xff")})
    with pytest.raises(ConfigError, match="absolute"):
        load_settings({"TWINSTREAM_WORKER_URI_ROOTS": "relative/dir"})
