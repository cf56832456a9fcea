"""The generated reference pages of the docs site: the configuration table (from the settings
declarations in ``twinstream/settings.py``) and the CLI reference (from ``build_parser()``).

Nothing here is typed by hand: ``docs/hooks.py`` calls these functions on every ``mkdocs build``,
so a new setting or flag appears on the site by itself. A copy of each page is kept in
``docs/reference/`` so that links to it work where the site is not built (the README on a code
host); ``tests/unit/test_docs_site.py`` fails when a copy and the code disagree, and
``python -m twinstream.cli.docs --write`` brings the copies up to date.
``python -m twinstream.cli.docs configuration|cli`` prints one page.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from twinstream.errors import InputError
from twinstream.settings import settings_table

# Where the generated pages live inside the site (docs/hooks.py adds them under these names).
CONFIGURATION_PAGE = "reference/configuration.md"
CLI_PAGE = "reference/cli.md"

# The options every command shares (twinstream.cli.main.COMMON): described once at the top.
COMMON_DESTS = frozenset({"json", "quiet", "debug"})


def configuration_page() -> str:
    """The configuration reference: every ``TWINSTREAM_*`` setting, its flag, default, meaning."""
    return f"""# Configuration

<!-- generated from twinstream/settings.py by twinstream/cli/docs.py; do not edit -->

Settings come from `TWINSTREAM_*` environment variables, overridden by command-line flags.
An unknown `TWINSTREAM_*` variable is an error, so a typo never silently falls back to a default.
Containers take their settings from the same variables
(see [Deployment](../operations/deployment.md)).

This page is generated from the settings declarations (`twinstream/settings.py`) when the site is
built: a new setting appears here by itself.

{settings_table()}
"""


def cli_page() -> str:
    """The CLI reference: every command and sub-command with its usage and its options."""
    from twinstream.cli.main import build_parser  # the commands register on import

    parser = build_parser()
    out = [
        "# CLI reference",
        "",
        "<!-- generated from twinstream.cli.build_parser() by twinstream/cli/docs.py; "
        "do not edit -->",
        "",
        "Generated from the argument parsers when the site is built, so every flag is here with "
        "the default `--help` shows. Flags listed under *settings* override the `TWINSTREAM_*` "
        "variable named beside them (see [Configuration](configuration.md)).",
        "",
        "Every command also takes `--json` (machine-readable JSON on stdout), `-q`/`--quiet` "
        "(no progress or info messages) and `--debug` (tracebacks of internal errors). Errors "
        "are one line on stderr with a non-zero exit code: 2 bad input or settings, 3 model, "
        "4 index/model mismatch, 5 not found, 69 a service is unreachable, 70 an internal "
        "error, 130 interrupted.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    commands = list(walk(parser))
    for path, _, summary in commands[1:]:
        out.append(f"| [`{path}`](#{anchor(path)}) | {cell(summary)} |")
    for path, sub, _ in commands[1:]:
        out += ["", f"## `{path}` {{#{anchor(path)}}}", ""]
        if sub.description:
            out += [text(sub.description), ""]
        out += ["```text", sub.format_usage().strip(), "```", ""]
        out += options(sub)
    return "\n".join(out).rstrip() + "\n"


def walk(parser: argparse.ArgumentParser, path: str = "twinstream", summary: str = ""):
    """(command path, parser, one-line help) for the parser and every sub-command below it."""
    yield path, parser, summary
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}", helps.get(name, ""))


def options(parser: argparse.ArgumentParser) -> list[str]:
    """One table per argument group, in the order ``--help`` shows them."""
    formatter = parser._get_formatter()  # the parser's own class: its defaults, as --help
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help is not argparse.SUPPRESS and a.dest not in COMMON_DESTS
                   and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if not actions:
            continue
        lines += [f"**{text(group.title or 'options')}**", "", "| option | meaning |",
                  "| --- | --- |"]
        for action in actions:
            flag, help_text = invocation(formatter, action), meaning(formatter, action)
            lines.append(f"| `{flag}` | {cell(help_text)} |")
        lines.append("")
    return lines


def meaning(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    """The help text as ``--help`` expands it, with the default when the help leaves it out."""
    helped = formatter._expand_help(action) if action.help else ""
    shown = action.default not in (None, False, argparse.SUPPRESS) and not action.required
    if shown and "default" not in helped:
        helped = f"{helped} (default: {action.default})".strip()
    return helped


def invocation(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    """``--flag METAVAR`` (or the positional's name) as ``--help`` writes it."""
    return formatter._format_action_invocation(action)


def anchor(path: str) -> str:
    return path.replace(" ", "-")


def text(value: str, table: bool = False) -> str:
    """Prose from the parsers, safe in Markdown: code spans (`...`) kept, elsewhere HTML escaped,
    emphasis and link markers neutralised (and a table's cell separator, in a table)."""
    parts = " ".join(value.split()).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans at all
        parts = ["\\`".join(parts)]
    specials = "*_[]|" if table else "*_[]"
    for i in range(0, len(parts), 2):  # the prose between code spans
        escaped = html.escape(parts[i], quote=False)
        for char in specials:
            escaped = escaped.replace(char, "\\" + char)
        parts[i] = escaped
    return "`".join(parts)


def cell(value: str) -> str:
    return text(value, table=True)


PAGES = {"configuration": configuration_page, "cli": cli_page}
GENERATED = {CONFIGURATION_PAGE: configuration_page, CLI_PAGE: cli_page}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def write(docs: Path = DOCS) -> list[Path]:
    """Bring the kept copies of the generated pages up to date; return those that changed."""
    changed = []
    for src_uri, render in GENERATED.items():
        path = docs / src_uri
        text = render()
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        for path in write():
            print(f"updated {path}")
        return 0
    if len(args) != 1 or args[0] not in PAGES:
        print(f"usage: python -m twinstream.cli.docs {'|'.join(PAGES)}|--write", file=sys.stderr)
        return InputError.exit_code
    sys.stdout.write(PAGES[args[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
