"""How commands talk to people and to programs: text or ``--json``, messages, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from twinstream.fields import printable
from twinstream.jsonio import to_json


def for_terminal(text: str) -> str:
    """Text with every control character but newline and tab escaped: ids, labels, reasons and
    paths come from producers and clients, and a key holding ESC [2J must not clear the
    operator's screen (JSON output escapes them by itself)."""
    return printable(text, keep="\n\t")


class Output:
    """``result`` is what a command produced: JSON on stdout with ``--json``, text otherwise.

    Messages (``info``, ``warn``) go to stderr so stdout stays parseable. Text for people goes
    through ``for_terminal``.
    """

    def __init__(self, json_mode: bool = False, quiet: bool = False,
                 stdout: IO[str] | None = None, stderr: IO[str] | None = None):
        self.json_mode = json_mode
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def result(self, data: Any, text: str | None = None) -> None:
        if self.json_mode:
            print(to_json(data), file=self.stdout, flush=True)
        elif text is not None:
            print(for_terminal(text), file=self.stdout, flush=True)
        else:
            print(to_json(data, indent=2), file=self.stdout, flush=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(for_terminal(message), file=self.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {for_terminal(message)}", file=self.stderr, flush=True)

    def error(self, message: str, exit_code: int) -> None:
        message = for_terminal(message)
        first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
        detail = message.strip().splitlines()[1:]
        print(f"twinstream: error: {first_line}", file=self.stderr, flush=True)
        for line in detail:  # e.g. a server's log tail; indented so the first line stands out
            print(f"  {line}", file=self.stderr)
        if self.json_mode:
            print(to_json({"error": message, "exit_code": exit_code}), file=self.stdout, flush=True)

    def progress(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = "", unit: str = "it"):
        """A tqdm bar on stderr; silent with --quiet/--json or when stderr is not a terminal."""
        from tqdm import tqdm

        is_tty = getattr(self.stderr, "isatty", lambda: False)()
        disable = self.quiet or self.json_mode or not is_tty
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=self.stderr,
                    disable=disable, dynamic_ncols=True, smoothing=0.1)
