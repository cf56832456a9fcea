"""``twinstream`` command line: parse, build settings once, dispatch, map errors to exit codes.

Sub-commands are declared in ``twinstream/cli/commands/*.py`` (one module per stage); each module's
``register`` adds its parsers and points them at a handler ``(args, settings, out) -> int | None``.
Handlers import their stage lazily so ``twinstream --help`` and serving commands never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from twinstream import __version__
from twinstream.cli.output import Output
from twinstream.errors import InputError, InternalError, Interrupted, TwinstreamError
from twinstream.settings import Settings, flag_specs, load_settings

COMMAND_MODULES = (
    "twinstream.cli.commands.data",
    "twinstream.cli.commands.train",
    "twinstream.cli.commands.model",
    "twinstream.cli.commands.stream",
    "twinstream.cli.commands.search",
    "twinstream.cli.commands.stack",
    "twinstream.cli.commands.serve",
)

Handler = Callable[[argparse.Namespace, Settings, Output], "int | None"]


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: the usage is what ``--help`` is for. Sub-command
    parsers are of the same class (``add_subparsers`` uses the parent's)."""

    def error(self, message: str):
        self.exit(InputError.exit_code,
                  f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress or info messages")
    group.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return common


COMMON = _common_options()


def add_command(subparsers: Any, name: str, handler: Handler, help: str,
                settings: Sequence[str] = (), description: str | None = None
                ) -> argparse.ArgumentParser:
    """Add a sub-command with the common options and flags for the given settings keys."""
    parser = subparsers.add_parser(name, help=help, description=description or help,
                                   parents=[COMMON])
    if settings:
        group = parser.add_argument_group("settings (flags override TWINSTREAM_* variables)")
        for spec in flag_specs(settings):
            group.add_argument(spec.flag, dest=f"setting:{spec.key}", default=None,
                               metavar=spec.type.__name__.upper(),
                               help=f"{spec.help} [default: {_default(spec.default)}; env "
                                    f"{spec.env}]")
    parser.set_defaults(handler=handler)
    return parser


def _default(value: Any) -> str:
    return "(empty)" if value == "" else str(value)


def add_group(subparsers: Any, name: str, help: str) -> Any:
    """A command with sub-commands of its own (``twinstream index list``)."""
    parser = subparsers.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="twinstream",
        description="Streaming content-based image retrieval with twin (Siamese) encoders.")
    parser.add_argument("--version", action="version", version=f"twinstream {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key.split(":", 1)[1]: value for key, value in vars(args).items()
            if key.startswith("setting:") and value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(json_mode=getattr(args, "json", False), quiet=getattr(args, "quiet", False))
    try:
        settings = load_settings(os.environ, _overrides(args))
        code = args.handler(args, settings, out)
        return int(code or 0)
    except TwinstreamError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        out.error(exc.message, exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted", Interrupted.exit_code)
        return Interrupted.exit_code
    except BrokenPipeError:  # `twinstream query ... | head`
        return 0
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if getattr(args, "debug", False):
            traceback.print_exc()
        out.error(f"internal error: {type(exc).__name__}: {exc} (run again with --debug "
                  "for the traceback, and please report it)", InternalError.exit_code)
        return InternalError.exit_code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
