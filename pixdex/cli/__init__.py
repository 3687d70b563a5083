"""`pixdex` console command: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys

from indexer.errors import PixdexError
from pixdex import __version__

# Each module exposes register(subparsers); the order here is the order in --help.
COMMAND_MODULES = ["shapes", "index", "search", "classify", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="pixdex",
        description="Index image collections with CLIP-style models; search and tag them.",
    )
    parser.add_argument("--version", action="version", version=f"pixdex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"pixdex.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pixdex` command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pixdex: interrupted", file=sys.stderr)
        return 130
    except PixdexError as exc:
        print(f"pixdex {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
