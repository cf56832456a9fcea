"""docker/Dockerfile: every image runs a real CLI command as a non-root user with a health check,
the serving images carry no torch and stay within their size budget, and the build context sends
what the images copy. Each check is also shown to fail on a planted mistake.

On a branch without the API engineer's work, ``test_image[api]`` fails: ``twinstream serve`` and
the ``api`` extra arrive with that merge.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from packaging.requirements import Requirement

from tests.unit.test_deploy_checkers import (
    DOCKERFILE,
    REPO,
    Dockerfile,
    base_dependency_problems,
    command_problems,
    copy_parts,
    expand_project,
    pyproject,
    serving_install_problems,
)
from twinstream.errors import TwinstreamError
from twinstream.settings import load_settings, setting_specs

SERVING = ("worker", "api")
TARGETS = (*SERVING, "train")


def ignored(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last matching rule wins,
    and a rule that matches a parent directory applies to what is inside)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def context_problems(dockerfile: Dockerfile, dockerignore: str) -> list[str]:
    patterns = [line.strip() for line in dockerignore.splitlines()
                if line.strip() and not line.startswith("#")]
    problems = []
    for stage in dockerfile.stages:
        for instruction in stage.all("COPY"):
            options, sources, _ = copy_parts(instruction.args)
            if "from" in options:
                continue
            for source in sources:
                if not (REPO / source).exists():
                    problems.append(f"line {instruction.line}: COPY {source}: no such file")
                elif ignored(patterns, source):
                    problems.append(f"line {instruction.line}: COPY {source}: .dockerignore "
                                    "keeps it out of the build context")
    return problems


def image_problems(dockerfile: Dockerfile, target: str, project: dict | None = None,
                   budget_mb: float | None = None) -> list[str]:
    if target not in dockerfile.by_name:
        return [f"no stage named {target}"]
    project = project or pyproject()
    files = dockerfile.files(target)
    problems = []

    user = dockerfile.last(target, "USER")
    if user is None or user.args.split(":")[0] in ("root", "0"):
        problems.append("runs as root (no USER, or USER root)")

    command = dockerfile.command(target)
    if command is None:
        problems.append("CMD/ENTRYPOINT in shell form: /bin/sh would be PID 1 and swallow the "
                        "SIGTERM that lets a worker drain")
    else:
        problems += command_problems(command, files, "command")
    health = dockerfile.healthcheck(target)
    if health is None:
        problems.append("no HEALTHCHECK")
    else:
        problems += command_problems(health, files, "health check")

    known = {spec.env for spec in setting_specs()}
    env = {k: v for k, v in dockerfile.env(target).items() if k.startswith("TWINSTREAM_")}
    problems += [f"ENV {name}: not a twinstream setting" for name in env if name not in known]
    try:
        load_settings({k: v for k, v in env.items() if k in known})
    except TwinstreamError as exc:
        problems.append(f"ENV: {exc}")

    installs = dockerfile.pip_installs(target)
    if target in SERVING:
        kwargs = {} if budget_mb is None else {"budget_mb": budget_mb}
        problems += serving_install_problems(installs, project, **kwargs)
    else:
        expanded, extra_problems = expand_project(installs, project)
        problems += extra_problems
        if "torch" not in {Requirement(r).name for r in expanded}:
            problems.append("the training image does not install torch")
    return problems


@pytest.fixture(scope="module")
def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


@pytest.mark.parametrize("target", TARGETS)
def test_image(dockerfile_text, target):
    assert image_problems(Dockerfile(dockerfile_text), target) == []


def test_build_context_sends_what_the_images_copy(dockerfile_text):
    dockerignore = (REPO / ".dockerignore").read_text()
    assert context_problems(Dockerfile(dockerfile_text), dockerignore) == []
    assert ignored(dockerignore.splitlines(), ".venv/bin/python")  # the big one stays out


def test_base_dependencies_are_the_torch_free_serving_install():
    assert base_dependency_problems(pyproject()) == []


# --- planted mistakes: each check can fail ----------------------------------------------------

def planted(text: str, old: str, new: str, count: int = 1) -> Dockerfile:
    assert old in text, f"the Dockerfile changed: {old!r} is gone, update this test"
    return Dockerfile(text.replace(old, new, count))


WORKER_INSTALL = "/opt/venv/bin/pip install .\n"


@pytest.mark.parametrize(("old", "new", "expected"), [
    (WORKER_INSTALL, "/opt/venv/bin/pip install . torch==2.13.0\n", "installs torch directly"),
    (WORKER_INSTALL, '/opt/venv/bin/pip install ".[train]"\n', "the train extra brings torch"),
    (WORKER_INSTALL, '/opt/venv/bin/pip install ".[local]"\n', ""),
    ("COPY --from=worker-venv", "COPY --from=train", "installs torch directly"),
    ("USER 10001:10001", "USER root", "runs as root"),
    ('CMD ["twinstream", "worker"]', "CMD twinstream worker", "shell form"),
    ('CMD ["twinstream", "worker"]', 'CMD ["twinstream", "wroker"]', "not a twinstream command"),
    ('healthcheck.py", "worker"]', 'healthcheck.py", "wrk"]', "healthcheck.py refuses"),
    ("COPY docker/healthcheck.py /opt/twinstream/healthcheck.py",
     "COPY docker/healthcheck.py /opt/twinstream/check.py", "does not contain"),
])
def test_worker_checks_catch_planted_mistakes(dockerfile_text, old, new, expected):
    problems = image_problems(planted(dockerfile_text, old, new), "worker")
    if expected:
        assert any(expected in p for p in problems), problems
    else:  # the local extra is harmless to torch-freeness: the check must not cry wolf
        assert not any("torch" in p for p in problems), problems


def test_a_missing_health_check_is_caught(dockerfile_text):
    without = re.sub(r"HEALTHCHECK [^\n]*\\\n\s*CMD \[[^\n]*\"worker\"\]\n", "", dockerfile_text)
    assert without != dockerfile_text
    assert "no HEALTHCHECK" in image_problems(Dockerfile(without), "worker")


def test_api_checks_catch_an_unknown_setting_and_a_missing_extra(dockerfile_text):
    problems = image_problems(planted(dockerfile_text, "TWINSTREAM_API_HOST=",
                                      "TWINSTREAM_API_HOSTNAME="), "api")
    assert any("TWINSTREAM_API_HOSTNAME: not a twinstream setting" in p for p in problems)
    problems = image_problems(planted(dockerfile_text, '".[api]"', '".[apy]"'), "api")
    assert any("extra [apy]" in p for p in problems)


def test_train_checks_catch_a_script_running_an_unknown_command(dockerfile_text, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ntwinstream train --data d --out o\ntwinstream exprot o\n")
    parsed = Dockerfile(dockerfile_text)
    files = {**parsed.files("train"), "/usr/local/bin/twinstream-train-job": script}
    problems = command_problems(["twinstream-train-job"], files, "command")
    assert len(problems) == 1 and "exprot" in problems[0]
    without_torch = dockerfile_text.replace('"torch==${TORCH_VERSION}"', "")
    problems = image_problems(planted(without_torch, '".[train]"', "."), "train")
    assert "the training image does not install torch" in problems


def test_size_budget_and_base_dependency_checks_can_fail(dockerfile_text):
    problems = image_problems(Dockerfile(dockerfile_text), "worker", budget_mb=10)
    assert any("over the 10 MB budget" in p for p in problems)
    project = pyproject()
    project["project"]["dependencies"].append("torch>=2.3")
    assert base_dependency_problems(project) == [
        "pyproject.toml's base dependencies include torch"]


def test_context_check_catches_a_file_left_out(dockerfile_text):
    dockerignore = (REPO / ".dockerignore").read_text().replace("!docker/train-job.sh\n", "")
    problems = context_problems(Dockerfile(dockerfile_text), dockerignore)
    assert any("docker/train-job.sh" in p and ".dockerignore" in p for p in problems)
