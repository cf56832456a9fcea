"""The top floor: the ``twinstream`` command line (parser, one module per stage's commands, the
demo, the docs generator, rendering for people and ``--json``). It may import every stage below
it, lazily for torch; nothing below imports it."""

from twinstream.cli.main import add_command, add_group, build_parser, main, run

__all__ = ["add_command", "add_group", "build_parser", "main", "run"]
