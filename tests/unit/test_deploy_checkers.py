"""Checkers for the deployment files, and tests of their parsing (this machine has no Docker).

Each ``*_problems`` function returns a list of one-line problems; the tests in
``test_deploy_images.py``, ``test_deploy_compose.py`` and ``test_deploy_k8s.py`` assert the real
files have none, and plant mistakes in copies of them to prove each check can fail.

This module holds the pieces they share: a Dockerfile parser (stages, inheritance, COPY sources,
pip installs), the command check against ``twinstream.cli.build_parser()``, and the dependency
closure of an install computed from the installed distributions' metadata.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata as metadata
import importlib.util
import io
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from twinstream.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
# Serving images must not carry these, not even as a dependency of a dependency.
TRAINING_ONLY = ("torch", "torchvision", "triton", "onnx", "scikit-learn", "matplotlib")
# Budget for the serving images' installed Python packages (measured ~190 MB for the worker).
SERVING_SITE_PACKAGES_BUDGET_MB = 250
PATH_DIRS = ("/opt/venv/bin", "/usr/local/bin", "/usr/bin", "/bin")


# --- commands ---------------------------------------------------------------------------------

def cli_problems(argv: list[str]) -> list[str]:
    """``argv`` (starting with ``twinstream``) must parse with the real CLI parser."""
    if not argv or argv[0] != "twinstream":
        return [f"{argv} does not start with 'twinstream'"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        if exc.code not in (0, None):  # 0: --help or --version, which exist too
            last = (stderr.getvalue().strip().splitlines() or ["?"])[-1]
            return [f"`{shlex.join(argv)}` is not a twinstream command: {last}"]
    return []


def script_commands(text: str) -> list[list[str]]:
    """The ``twinstream ...`` invocations of a shell script, as argv lists."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;|\|", line):
            words = part.split()
            while words and words[0] in ("then", "else", "do", "exec", "!"):
                words = words[1:]
            if words and words[0] == "twinstream":
                commands.append(shlex.split(" ".join(words)))
    return commands


def load_script_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"deploy_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_problems(argv: list[str], files: dict[str, Path], what: str) -> list[str]:
    """A container command: the CLI itself, a Python script of ours, or a shell script of ours.

    ``files`` maps paths inside the image to the repository files copied there.
    """
    if not argv:
        return [f"{what}: no command"]
    if argv[0] == "twinstream":
        return [f"{what}: {p}" for p in cli_problems(argv)]
    if PurePosixPath(argv[0]).name in ("python", "python3") and len(argv) > 1:
        source = files.get(argv[1])
        if source is None:
            return [f"{what}: runs {argv[1]}, which the image does not contain"]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                load_script_module(source).build_parser().parse_args(argv[2:])
        except SystemExit:
            return [f"{what}: {source.name} refuses {argv[2:]}: {stderr.getvalue().strip()}"]
        return []
    candidates = [argv[0]] if "/" in argv[0] else [f"{d}/{argv[0]}" for d in PATH_DIRS]
    source = next((files[c] for c in candidates if c in files), None)
    if source is None:
        return [f"{what}: {argv[0]} is neither the twinstream CLI nor a script in the image"]
    invocations = script_commands(source.read_text())
    if not invocations:
        return [f"{what}: {source.name} runs no twinstream command"]
    where = f"{what} ({source.name})"
    return [p for inv in invocations for p in command_problems(inv, files, where)]


# --- Dockerfile -------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continuation lines; drop comments, blank lines and parser directives."""
    lines, buffer, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continuation, as Docker does
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        lines.append((start, " ".join(buffer)))
        buffer = []
    if buffer:
        lines.append((start, " ".join(buffer)))
    return lines


def substitute(text: str, values: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` replaced by known build args and environment values."""
    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, text)


def exec_form(args: str) -> list[str] | None:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for the shell form."""
    if not args.lstrip().startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    """COPY's options, sources and destination."""
    words = exec_form(args) or shlex.split(args)
    options = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    return options, words[:-1], words[-1]


class Dockerfile:
    def __init__(self, text: str):
        self.global_args: dict[str, str] = {}
        self.stages: list[Stage] = []
        for number, line in logical_lines(text):
            keyword, _, rest = line.partition(" ")
            keyword, rest = keyword.upper(), rest.strip()
            if keyword == "FROM":
                words = [w for w in rest.split() if not w.startswith("--")]
                name = words[2] if len(words) > 2 and words[1].lower() == "as" else ""
                base = substitute(words[0], self.global_args)
                self.stages.append(Stage(name or str(len(self.stages)), base))
            elif keyword == "ARG":
                key, _, default = rest.partition("=")
                target = self.stages[-1].args if self.stages else self.global_args
                target[key.strip()] = default.strip().strip('"')
            elif self.stages:
                self.stages[-1].instructions.append(Instruction(keyword, rest, number))
        self.by_name = {s.name: s for s in self.stages}

    def chain(self, target: str) -> list[Stage]:
        """The stages whose filesystem and settings ``target`` inherits, base first."""
        chain, name = [], target
        while name in self.by_name and self.by_name[name] not in chain:
            chain.insert(0, self.by_name[name])
            name = self.by_name[name].base
        return chain

    def needed(self, target: str) -> list[Stage]:
        """Every stage ``target`` builds on or copies from (where installed files can come from)."""
        seen: list[Stage] = []
        pending = [target]
        while pending:
            stage = self.by_name.get(pending.pop())
            if stage is None or stage in seen:
                continue
            seen.append(stage)
            pending.append(stage.base)
            pending += [copy_parts(i.args)[0].get("from", "") for i in stage.all("COPY")]
        return seen

    def last(self, target: str, keyword: str) -> Instruction | None:
        """The instruction in force in the final image (CMD is reset by a later ENTRYPOINT)."""
        found = None
        for stage in self.chain(target):
            for instruction in stage.instructions:
                if instruction.keyword == keyword:
                    found = instruction
                elif keyword == "CMD" and instruction.keyword == "ENTRYPOINT":
                    found = None
        return found

    def env(self, target: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for stage in self.chain(target):
            for instruction in stage.all("ENV"):
                words = shlex.split(instruction.args)
                if words and "=" not in words[0]:
                    env[words[0]] = " ".join(words[1:])
                else:
                    env.update(w.split("=", 1) for w in words)
        return env

    def files(self, target: str) -> dict[str, Path]:
        """Image path -> repository file, for what the final image's stages COPY from context."""
        files = {}
        for stage in self.chain(target):
            for instruction in stage.all("COPY"):
                options, sources, dest = copy_parts(instruction.args)
                if "from" in options:
                    continue
                for source in sources:
                    path = dest if not dest.endswith("/") else dest + PurePosixPath(source).name
                    files[path] = REPO / source
        return files

    def command(self, target: str) -> list[str] | None:
        """ENTRYPOINT + CMD in exec form; None if either is in shell form."""
        parts = []
        for keyword in ("ENTRYPOINT", "CMD"):
            instruction = self.last(target, keyword)
            if instruction is not None:
                form = exec_form(instruction.args)
                if form is None:
                    return None
                parts += form
        return parts

    def healthcheck(self, target: str) -> list[str] | None:
        instruction = self.last(target, "HEALTHCHECK")
        if instruction is None or instruction.args.upper() == "NONE":
            return None
        command = re.sub(r"^(?:--\S+\s+)*", "", instruction.args)
        if not command.upper().startswith("CMD "):
            return None
        return exec_form(command[4:]) or ["/bin/sh", "-c", command[4:].strip()]

    def pip_installs(self, target: str) -> list[str]:
        """Every requirement a ``pip install`` in the stages ``target`` needs names."""
        requirements = []
        for stage in self.needed(target):
            values = {**self.global_args, **stage.args, **self.env(stage.name)}
            for instruction in stage.all("RUN"):
                for command in re.split(r"&&|;|\|\|", substitute(instruction.args, values)):
                    requirements += _pip_install_args(shlex.split(command))
        return requirements


_PIP_OPTIONS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-t",
                           "--target", "--prefix", "--root", "--platform", "--python-version",
                           "--implementation", "--abi", "--src", "--progress-bar"}


def _pip_install_args(words: list[str]) -> list[str]:
    if len(words) >= 3 and PurePosixPath(words[0]).name.startswith("python") and words[1:3] == [
            "-m", "pip"]:
        words = ["pip", *words[3:]]
    if len(words) < 2 or PurePosixPath(words[0]).name not in ("pip", "pip3") or words[1] != \
            "install":
        return []
    requirements, rest = [], words[2:]
    while rest:
        word = rest.pop(0)
        if word in ("-r", "--requirement", "-c", "--constraint"):
            requirements.append(f"UNCHECKABLE {word} {rest.pop(0) if rest else ''}")
        elif word in ("-e", "--editable"):
            requirements.append(rest.pop(0) if rest else "")
        elif word in _PIP_OPTIONS_WITH_VALUE:
            rest = rest[1:]
        elif not word.startswith("-"):
            requirements.append(word)
    return requirements


# --- what an install list pulls in --------------------------------------------------------------

def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def expand_project(requirements: list[str], project: dict) -> tuple[list[str], list[str]]:
    """Local project references (``.``, ``.[api]``, ``/src``) -> its requirements; problems."""
    expanded, problems = [], []
    declared = project["project"].get("optional-dependencies", {})
    for requirement in requirements:
        local = re.fullmatch(r"(?:\.|\./|/[\w/.-]*)(?:\[(?P<extras>[^\]]*)\])?", requirement)
        if requirement.startswith("UNCHECKABLE"):
            problems.append(f"cannot check `{requirement[12:]}`: name the packages explicitly")
        elif local is None:
            expanded.append(requirement)
        else:
            expanded += project["project"]["dependencies"]
            for extra in filter(None, (local["extras"] or "").split(",")):
                if extra.strip() not in declared:
                    problems.append(f"installs the extra [{extra.strip()}], which pyproject.toml "
                                    f"does not declare")
                expanded += declared.get(extra.strip(), [])
    return expanded, problems


def closure(requirements: list[str]) -> tuple[dict[str, metadata.Distribution], list[str]]:
    """The installed distributions ``requirements`` pull in, transitively (per their metadata)."""
    found: dict[str, metadata.Distribution] = {}
    problems = []
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        key = canonicalize_name(requirement.name)
        if key in found:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed here, so its dependencies "
                            "cannot be checked (make install)")
            continue
        found[key] = distribution
        for text in distribution.requires or []:
            child = Requirement(text)
            extras = ("", *requirement.extras)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                pending.append(child)
    return found, problems


@functools.cache
def _distribution_bytes(name: str) -> int:
    files = (Path(f.locate()) for f in metadata.distribution(name).files or [])
    return sum(path.stat().st_size for path in files if path.is_file())


def installed_mb(distributions: dict[str, metadata.Distribution]) -> float:
    return sum(_distribution_bytes(d.metadata["Name"]) for d in distributions.values()) / 1e6


def serving_install_problems(requirements: list[str], project: dict,
                             budget_mb: float = SERVING_SITE_PACKAGES_BUDGET_MB) -> list[str]:
    """A serving image's install list: no training extra, no torch anywhere, within budget."""
    expanded, problems = expand_project(requirements, project)
    names = {canonicalize_name(Requirement(r).name) for r in expanded}
    for requirement in requirements:
        if re.search(r"\[[^\]]*\btrain\b", requirement):
            problems.append(f"installs `{requirement}`: the train extra brings torch")
    for name in TRAINING_ONLY:
        if canonicalize_name(name) in names:
            problems.append(f"installs {name} directly")
    distributions, missing = closure(expanded)
    problems += missing
    for name in TRAINING_ONLY:
        if canonicalize_name(name) in distributions and canonicalize_name(name) not in names:
            problems.append(f"pulls in {name} through its dependencies")
    size = installed_mb(distributions)
    if size > budget_mb:
        problems.append(f"its packages take {size:.0f} MB, over the {budget_mb:g} MB budget")
    return problems


def base_dependency_problems(project: dict) -> list[str]:
    names = {canonicalize_name(Requirement(r).name) for r in project["project"]["dependencies"]}
    return [f"pyproject.toml's base dependencies include {n}" for n in TRAINING_ONLY
            if canonicalize_name(n) in names]


# --- tests of the parsing itself --------------------------------------------------------------

SAMPLE = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11-slim
FROM ${BASE} AS base
ENV A=1 \\
    # a comment inside a continuation
    B="two words"
FROM base AS build
ARG V=1.2
RUN python -m venv /v && /v/bin/pip install --index-url https://x/${V} "pkg==${V}" -q . \\
 && pip install -r req.txt
FROM base AS final
COPY --from=build /v /v
COPY docker/x.py /opt/x.py
ENTRYPOINT ["tini", "--"]
FROM final AS child
CMD twinstream worker
"""


def test_dockerfile_parser_reads_stages_inheritance_and_installs():
    parsed = Dockerfile(SAMPLE)
    assert [s.name for s in parsed.stages] == ["base", "build", "final", "child"]
    assert parsed.stages[0].base == "python:3.11-slim"
    assert parsed.env("child") == {"A": "1", "B": "two words"}
    assert {s.name for s in parsed.needed("final")} == {"final", "build", "base"}
    assert parsed.pip_installs("final") == ["pkg==1.2", ".", "UNCHECKABLE -r req.txt"]
    assert parsed.pip_installs("base") == []
    assert parsed.files("child") == {"/opt/x.py": REPO / "docker/x.py"}
    assert parsed.command("final") == ["tini", "--"]
    assert parsed.command("child") is None  # shell-form CMD


def test_cli_check_accepts_real_commands_and_rejects_others():
    assert cli_problems(["twinstream", "worker"]) == []
    assert cli_problems(["twinstream", "datasets", "shapes", "--out", "x"]) == []
    assert "not a twinstream command" in cli_problems(["twinstream", "wroker"])[0]
    assert "not a twinstream command" in cli_problems(["twinstream", "worker", "--nope"])[0]
    assert cli_problems(["python", "x"])


def test_script_commands_finds_invocations_inside_shell_constructs():
    script = ('#!/bin/sh\n# twinstream comment\nif x; then twinstream a --b "$c"; fi\n'
              'twinstream d \\\n  --e f && twinstream g\n')
    assert script_commands(script) == [["twinstream", "a", "--b", "$c"],
                                       ["twinstream", "d", "--e", "f"], ["twinstream", "g"]]


def test_closure_follows_dependencies_and_flags_torch():
    distributions, problems = closure(["onnxruntime"])
    assert "numpy" in distributions and not problems
    bad = serving_install_problems(["torch==2.13.0"], pyproject())
    assert any("installs torch directly" in p for p in bad)
    hidden = serving_install_problems([".[train]"], pyproject())
    assert any("train extra" in p for p in hidden)
    missing = serving_install_problems(["no-such-package-xyz"], pyproject())
    assert any("not installed here" in p for p in missing)


@pytest.mark.parametrize("requirement", [".", "./", "/src", ".[api]"])
def test_local_project_references_expand_to_the_base_dependencies(requirement):
    expanded, _ = expand_project([requirement], pyproject())
    assert set(pyproject()["project"]["dependencies"]) <= set(expanded)
