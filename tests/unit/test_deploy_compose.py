"""docker/compose.yaml: it parses, interpolates as Compose does, and configures every twinstream
container only with TWINSTREAM_* variables the settings know and accept; the pieces agree with
each other (topics and partitions, the Redis password, the model path, start order); every
command it overrides is a real CLI command. Each check is also shown to fail on a planted mistake.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.test_deploy_checkers import DOCKERFILE, REPO, Dockerfile, command_problems
from twinstream.errors import TwinstreamError
from twinstream.settings import ENV_PREFIX, Settings, load_settings, setting_specs

COMPOSE = REPO / "docker" / "compose.yaml"
# Variables the compose file may interpolate besides the settings: only Redis's own password,
# which the Redis container needs in its own form (the twinstream side gets it inside a URL).
OTHER_VARIABLES = {"REDIS_PASSWORD"}
ENVIRONMENT = {"REDIS_PASSWORD": "0123456789abcdef"}
# The README's example runs --scale worker=4; the topic must have a partition for each.
DOCUMENTED_WORKERS = 4

_REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_]\w*)|"
                        r"\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})")


class InterpolationError(ValueError):
    pass


def interpolate(value, environ: dict[str, str], names: set[str]):
    """Compose's variable substitution on every string of a parsed file; records the names."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ, names) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, names) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["plain"] or match["braced"]
        names.add(name)
        op, arg, current = match["op"], match["arg"] or "", environ.get(name)
        present = current is not None and (current != "" or not (op or "").startswith(":"))
        if op in ("-", ":-"):
            return current if present else arg
        if op in ("?", ":?"):
            if not present:
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return current
        if op in ("+", ":+"):
            return arg if present else ""
        return current or ""

    return _REFERENCE.sub(one, value)


def load_compose(text: str, environ: dict[str, str]) -> tuple[dict, set[str]]:
    names: set[str] = set()
    return interpolate(yaml.safe_load(text), environ, names), names


def as_dict(environment) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {k: "" if v is None else str(v) for k, v in (environment or {}).items()}


def as_argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def image_target(name: str, service: dict, dockerfile: Dockerfile) -> tuple[str | None, list]:
    """The Dockerfile target a service runs, checking how it is built and named."""
    build = service.get("build")
    if build is None:
        return None, []
    problems = []
    context = (COMPOSE.parent / build.get("context", ".")).resolve()
    if context != REPO or (context / build.get("dockerfile", "Dockerfile")) != DOCKERFILE:
        problems.append(f"{name}: builds {context / build.get('dockerfile', 'Dockerfile')}, "
                        f"not {DOCKERFILE.relative_to(REPO)} with the repository as context")
    target = build.get("target")
    if target not in dockerfile.by_name:
        problems.append(f"{name}: build target {target!r} is not a stage of the Dockerfile")
        return None, problems
    if service.get("image", f"twinstream-{target}").split(":")[0] != f"twinstream-{target}":
        problems.append(f"{name}: image {service['image']!r} should be named twinstream-{target}")
    return target, problems


def kafka_topics_created(command) -> dict[str, int]:
    """``--topic T --partitions N`` of each ``kafka-topics.sh --create`` in a command."""
    created = {}
    for line in " ".join(as_argv(command)).splitlines() or [""]:
        words = shlex.split(line)
        if "--create" in words:
            created[words[words.index("--topic") + 1]] = int(words[words.index("--partitions")
                                                                   + 1])
    return created


def depends(service: dict, on: str) -> str | None:
    value = service.get("depends_on") or {}
    return value.get(on, {}).get("condition") if isinstance(value, dict) else None


def compose_problems(text: str, environ: dict[str, str] | None = None,
                     dockerfile: Dockerfile | None = None) -> list[str]:
    environ = ENVIRONMENT if environ is None else environ
    dockerfile = dockerfile or Dockerfile(DOCKERFILE.read_text())
    try:
        compose, names = load_compose(text, environ)
    except InterpolationError as exc:
        return [str(exc)]
    known = {spec.env for spec in setting_specs()}
    problems = [f"interpolates {n}, which is not a twinstream setting" for n in sorted(names)
                if n not in known and (n.startswith(ENV_PREFIX) or n not in OTHER_VARIABLES)]
    services = compose.get("services", {})

    ours: dict[str, tuple[dict, str, Settings]] = {}
    for name, service in services.items():
        target, build_problems = image_target(name, service, dockerfile)
        problems += build_problems
        if target is None:
            continue
        env = as_dict(service.get("environment"))
        problems += [f"{name}: environment {k} is not a TWINSTREAM_* setting the settings know"
                     for k in env if k not in known]
        try:
            image_env = {k: v for k, v in dockerfile.env(target).items() if k in known}
            settings = load_settings({**image_env, **{k: v for k, v in env.items() if k in known}})
        except TwinstreamError as exc:
            problems.append(f"{name}: {exc}")
            continue
        ours[name] = (service, target, settings)
        files = dockerfile.files(target)
        for key in ("entrypoint", "command"):
            if service.get(key) is not None:
                argv = as_argv(service[key])
                if key == "command" and dockerfile.last(target, "ENTRYPOINT") is None:
                    problems += command_problems(argv, files, f"{name}: command")
        if target == "worker" and ("container_name" in service or service.get("ports")):
            problems.append(f"{name}: a container_name or host ports stop --scale {name}=N")

    problems += _wiring_problems(services, ours)
    return problems


def _wiring_problems(services: dict, ours: dict[str, tuple[dict, str, Settings]]) -> list[str]:
    """Do the services agree: topics, partitions, hosts, password, model, start order?"""
    problems = []
    created = {}
    for service in services.values():
        if "kafka-topics.sh" in " ".join(as_argv(service.get("command") or [])):
            created.update(kafka_topics_created(service["command"]))
    redis_argv = as_argv(services.get("redis", {}).get("command") or [])
    password = redis_argv[redis_argv.index("--requirepass") + 1] if (
        "--requirepass" in redis_argv) else None
    if "--appendonly" not in redis_argv:
        problems.append("redis: no --appendonly (AOF persistence)")
    models = {name: s.model.path for name, (_, _, s) in ours.items() if s.model.path}

    for name, (service, _, settings) in ours.items():
        if settings.kafka.bootstrap:
            host = settings.kafka.bootstrap.split(",")[0].rsplit(":", 1)[0]
            if host not in services:
                problems.append(f"{name}: Kafka host {host} is not a service of the file")
            for topic in (settings.kafka.topic, settings.kafka.dlq_topic):
                if created.get(topic) != settings.kafka.partitions:
                    problems.append(f"{name}: topic {topic} with {settings.kafka.partitions} "
                                    f"partitions is not what the topic init creates ({created})")
            if settings.kafka.partitions < DOCUMENTED_WORKERS * settings.worker.processes:
                problems.append(f"{name}: {settings.kafka.partitions} partitions cannot feed "
                                f"{DOCUMENTED_WORKERS} workers of {settings.worker.processes} "
                                "process(es)")
            if depends(service, "kafka-init") != "service_completed_successfully":
                problems.append(f"{name}: does not wait for the topic init to complete")
        if settings.redis.url:
            url = urlsplit(settings.redis.url)
            if url.hostname not in services:
                problems.append(f"{name}: Redis host {url.hostname} is not a service of the file")
            if url.password != password:
                problems.append(f"{name}: the Redis URL's password is not redis' --requirepass")
            if depends(service, "redis") != "service_healthy":
                problems.append(f"{name}: does not wait for Redis to be healthy")
        if settings.model.path and name != "trainer":
            if depends(service, "trainer") != "service_completed_successfully":
                problems.append(f"{name}: does not wait for the training job")
            if models.get("trainer") != settings.model.path:
                problems.append(f"{name}: reads the model at {settings.model.path}, the trainer "
                                f"writes {models.get('trainer')}")
        if settings.model.path:
            mounts = [str(v).split(":")[1] for v in service.get("volumes", [])]
            if not any(Path(settings.model.path).is_relative_to(m) for m in mounts):
                problems.append(f"{name}: no volume holds {settings.model.path}")
    return problems


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


def test_compose_file_is_consistent_with_the_settings_and_the_cli(compose_text):
    assert compose_problems(compose_text) == []


def test_compose_file_honours_settings_given_in_the_environment(compose_text):
    environ = {**ENVIRONMENT, "TWINSTREAM_KAFKA_PARTITIONS": "32",
               "TWINSTREAM_KAFKA_TOPIC": "photos", "TWINSTREAM_WORKER_PROCESSES": "2"}
    assert compose_problems(compose_text, environ) == []
    compose, _ = load_compose(compose_text, environ)
    worker_env = as_dict(compose["services"]["worker"]["environment"])
    assert worker_env["TWINSTREAM_KAFKA_TOPIC"] == "photos"
    assert worker_env["TWINSTREAM_WORKER_PROCESSES"] == "2"


def test_interpolation_follows_compose_rules():
    names: set[str] = set()
    environ = {"SET": "x", "EMPTY": ""}
    assert interpolate(["$SET ${SET} $$SET", "${EMPTY:-d}|${EMPTY-d}|${UNSET-d}", "${SET:+a}"],
                       environ, names) == ["x x $SET", "d||d", "a"]
    assert names == {"SET", "EMPTY", "UNSET"}
    with pytest.raises(InterpolationError, match="EMPTY is missing: why"):
        interpolate("${EMPTY:?why}", environ, set())
    assert interpolate("${EMPTY?why}", environ, set()) == ""


# --- planted mistakes: each check can fail ----------------------------------------------------

def planted(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, f"compose.yaml changed: {old!r} is gone, update this test"
    return text.replace(old, new, count)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("TWINSTREAM_WORKER_BATCH:", "TWINSTREAM_WORKER_BATCHSIZE:",
     "worker: environment TWINSTREAM_WORKER_BATCHSIZE is not"),
    ("${TWINSTREAM_WORKER_BATCH:-64}", "${TWINSTREAM_WORKER_BATCHES:-64}",
     "interpolates TWINSTREAM_WORKER_BATCHES"),
    ("${TWINSTREAM_WORKER_BATCH:-64}", "${BATCH:-64}", "interpolates BATCH"),
    ("TWINSTREAM_WORKER_BATCH: ${TWINSTREAM_WORKER_BATCH:-64}",
     "TWINSTREAM_WORKER_BATCH: '64'\n      LOG_LEVEL: debug", "environment LOG_LEVEL"),
    ("${TWINSTREAM_WORKER_BATCH:-64}", "${TWINSTREAM_WORKER_BATCH:-lots}", "not a valid int"),
    ("--partitions ${TWINSTREAM_KAFKA_PARTITIONS:-16}", "--partitions 4",
     "not what the topic init creates"),
    ("${TWINSTREAM_KAFKA_TOPIC:-images}.dlq", "${TWINSTREAM_KAFKA_TOPIC:-images}.dead",
     "topic images.dlq"),
    ("TWINSTREAM_KAFKA_PARTITIONS: ${TWINSTREAM_KAFKA_PARTITIONS:-16}",
     "TWINSTREAM_KAFKA_PARTITIONS: 2", "2 partitions cannot feed 4 workers"),
    ("TWINSTREAM_KAFKA_BOOTSTRAP: kafka:9092", "TWINSTREAM_KAFKA_BOOTSTRAP: broker:9092",
     "Kafka host broker is not a service"),
    ("- --requirepass\n      - ${REDIS_PASSWORD",
     "- --requirepass\n      - hunter2${REDIS_PASSWORD",
     "password is not redis' --requirepass"),
    ("      - --appendonly\n      - \"yes\"\n", "", "no --appendonly"),
    ("      trainer:\n        condition: service_completed_successfully\n    # On SIGTERM",
     "    # On SIGTERM", "worker: does not wait for the training job"),
    ("    stop_grace_period: 30s\n", "    stop_grace_period: 30s\n    container_name: worker\n",
     "stop --scale worker=N"),
    ("    stop_grace_period: 30s\n",
     "    stop_grace_period: 30s\n    command: [\"twinstream\", \"wroker\"]\n",
     "worker: command: `twinstream wroker` is not a twinstream command"),
    ("TWINSTREAM_MODEL_PATH: ${TWINSTREAM_MODEL_PATH:-/artifacts/model.onnx}\n    volumes",
     "TWINSTREAM_MODEL_PATH: /artifacts/other.onnx\n    volumes", "the trainer writes"),
    ("      target: worker", "      target: wroker", "'wroker' is not a stage"),
    ("image: twinstream-worker", "image: twinstream-api", "should be named twinstream-worker"),
])
def test_compose_checks_catch_planted_mistakes(compose_text, old, new, expected):
    problems = compose_problems(planted(compose_text, old, new))
    assert any(expected in p for p in problems), problems


def test_a_bad_value_from_the_environment_or_a_missing_password_is_caught(compose_text):
    problems = compose_problems(compose_text, {**ENVIRONMENT, "TWINSTREAM_WORKER_BATCH": "0"})
    assert any("TWINSTREAM_WORKER_BATCH must be positive" in p for p in problems), problems
    problems = compose_problems(compose_text, {})
    assert problems and "required variable REDIS_PASSWORD is missing" in problems[0]
