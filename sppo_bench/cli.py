"""The ``sppo-bench`` command line: one entry point, one sub-command module per track.

Each module in ``COMMAND_MODULES`` exposes ``add_parser(subparsers)`` which registers its
sub-command(s) and sets ``func(args) -> int`` as the parser default. A ``UserError`` anywhere
below is printed as one line, ``sppo-bench: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import typing
from collections.abc import Sequence

from sppo_bench import __version__
from sppo_bench.errors import UserError

COMMAND_MODULES: tuple[str, ...] = (
    "sppo_bench.commands.suite",
    "sppo_bench.commands.control",
    "sppo_bench.commands.llm",
    "sppo_bench.commands.info",
)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default: ``(default: X)`` is appended to a help text that
    does not already say its default; a flag's is ``off``, an unset value's ``none``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        default = action.default
        if action.required:
            shown = "required"
        elif isinstance(action, argparse._StoreTrueAction | argparse._StoreConstAction):
            shown = "off"
        elif default is None or default == []:
            shown = "none"
        elif isinstance(default, list | tuple):
            shown = " ".join(map(str, default))
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


class OneLineParser(argparse.ArgumentParser):
    """Command-line mistakes are one line (``sppo-bench: error: ...``, exit 2), with any very
    long value shortened, instead of argparse's usage block. Help shows every default."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        message = re.sub(r"'([^']{60})[^']{20,}'", r"'\1...'", message)
        self.exit(2, f"sppo-bench: error: {self.prog.removeprefix('sppo-bench ')}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sppo-bench",
        description="Sequence-level PPO (SPPO) and its baselines: control suite and LLM math.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # no command: the help, as a usage error
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"sppo-bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be made, read or written
        name = str(exc.filename or "")
        name = name if len(name) <= 80 else f"{name[:40]}...{name[-30:]}"
        reason = exc.strerror or type(exc).__name__
        print(f"sppo-bench: error: {reason}: {name!r}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sppo-bench: interrupted; finished work is saved, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
