"""The docs site against the code: the generated reference pages (configuration, CLI) say what the
settings declarations and the argument parsers say, the mkdocs hook serves them, the copies kept in
docs/reference/ are current, and the README is a front page whose links lead somewhere.
(``make docs`` builds the site itself with ``mkdocs build --strict``.)"""

from __future__ import annotations

import argparse
import html
import importlib
import re
from pathlib import Path

import pytest

from twinstream.cli import build_parser
from twinstream.cli.docs import (
    CLI_PAGE,
    CONFIGURATION_PAGE,
    GENERATED,
    cli_page,
    configuration_page,
    walk,
    write,
)
from twinstream.settings import setting_specs

REPO = Path(__file__).resolve().parents[2]


def table_rows(page: str) -> list[list[str]]:
    rows = []
    for line in page.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))])
    return rows


def test_the_configuration_page_lists_every_setting_as_the_code_declares_it():
    rows = table_rows(configuration_page())
    assert rows[0] == ["variable", "flag", "default", "meaning"]
    by_env = {row[0].strip("`"): row for row in rows[1:]}
    specs = setting_specs()
    assert list(by_env) == [spec.env for spec in specs]  # every one, in declaration order
    for spec in specs:
        _, flag, default, meaning = by_env[spec.env]
        assert flag == (f"`{spec.flag}`" if spec.flag else "")
        assert default == ("(empty)" if spec.default == "" else f"`{spec.default}`")
        assert meaning == spec.help


def section(page: str, path: str) -> str:
    start = page.index(f"## `{path}`")
    end = page.find("\n## ", start + 1)
    return page[start:end if end > 0 else None]


def plain(markdown: str) -> str:
    """Markdown as read: escapes and code marks dropped, HTML entities decoded."""
    return html.unescape(re.sub(r"[\\`]", "", markdown))


def test_the_cli_page_has_every_command_with_every_flag_and_its_help():
    page = cli_page()
    commands = list(walk(build_parser()))[1:]
    assert len(commands) > 20
    for path, parser, _ in commands:
        text = section(page, path)
        assert parser.format_usage().strip() in text, f"{path}: usage missing"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) \
                    or action.dest in {"json", "quiet", "debug"}:
                continue
            names = action.option_strings or [action.metavar or action.dest]
            for name in names:
                assert str(name) in text, f"{path}: {name} missing"
            if action.help:
                first_words = " ".join(action.help.split()[:3])
                assert plain(first_words) in plain(text), f"{path} {names[0]}: help missing"


def test_a_new_flag_appears_on_the_cli_page_by_itself(monkeypatch):
    cli_main = importlib.import_module("twinstream.cli.main")  # the package exports a main()

    original = cli_main.build_parser

    def with_a_new_flag():
        parser = original()
        for path, sub, _ in walk(parser):
            if path == "twinstream status":
                sub.add_argument("--brand-new-flag", help="a flag added after the docs")
        return parser

    monkeypatch.setattr(cli_main, "build_parser", with_a_new_flag)
    text = section(cli_page(), "twinstream status")
    assert "`--brand-new-flag BRAND_NEW_FLAG`" in text
    assert "a flag added after the docs" in text


def test_the_mkdocs_hook_serves_the_pages_the_code_generates():
    from mkdocs.commands.build import get_files
    from mkdocs.config import load_config

    config = load_config(str(REPO / "mkdocs.yml"))
    files = config.plugins.on_files(get_files(config), config=config)
    for src_uri, render in GENERATED.items():
        served = files.get_file_from_path(src_uri)
        assert served is not None and served.content_string == render()
    nav_pages = re.findall(r":\s+([\w/.-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
    assert CONFIGURATION_PAGE in nav_pages and CLI_PAGE in nav_pages


def test_the_kept_copies_of_the_generated_pages_are_current(tmp_path):
    for src_uri in GENERATED:
        (tmp_path / src_uri).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / src_uri).write_text((REPO / "docs" / src_uri).read_text())
    stale = write(tmp_path)
    assert not stale, ("the kept copies in docs/reference/ differ from the code: run "
                       "`python -m twinstream.cli.docs --write`")


def test_a_stale_copy_is_detected(tmp_path):
    (tmp_path / "reference").mkdir()
    (tmp_path / CONFIGURATION_PAGE).write_text(configuration_page().replace("`8`", "`9`"))
    (tmp_path / CLI_PAGE).write_text(cli_page())
    assert write(tmp_path) == [tmp_path / CONFIGURATION_PAGE]


# --- the README --------------------------------------------------------------------------------

README = (REPO / "README.md").read_text()


def test_the_readme_is_a_front_page():
    assert len(README.splitlines()) <= 250
    for must in ("make demo", "make test", "docs/reference/configuration.md",
                 "docs/benchmarks.md", "docs/tutorials/door-for-your-team.md"):
        assert must in README
    assert "TWINSTREAM_WORKER_MAX_AWAITING_DURABILITY" not in README  # the table lives in docs


LINKS = sorted({t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
                if not re.match(r"[a-z]+://", t)})


@pytest.mark.parametrize("target", LINKS)
def test_every_readme_link_leads_to_a_file_of_the_repository(target):
    assert (REPO / target).exists(), f"README links to {target}, which does not exist"
