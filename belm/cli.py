"""The `belm` console script.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds an
argparse parser whose `func` default runs it and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

#: modules that register subcommands, in the order `belm --help` lists them
COMMAND_MODULES = ("belm.demo", "belm.coeffs", "belm.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="belm",
        description="Diffusion sampling with exact inversion (BELM, O-BELM, BDIA, EDICT, DDIM).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as err:  # bad input, missing or unwritable files: one line
        print(f"belm {args.command}: error: {err}", file=sys.stderr)
        return 2


def _one_line_warning(command: str):
    """Warnings as `belm CMD: warning: message` on stderr (no file and line of library code)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"belm {command}: warning: {message}", file=sys.stderr)

    return show


if __name__ == "__main__":
    sys.exit(main())
