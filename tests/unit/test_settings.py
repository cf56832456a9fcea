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


def test_readme_configuration_table_matches_the_settings():
    from pathlib import Path

    from twinstream.docs import render

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert render(readme) == readme, "run `python -m twinstream.docs` to regenerate the table"
