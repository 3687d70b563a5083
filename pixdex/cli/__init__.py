"""`pixdex` console command: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from indexer.errors import PixdexError

# Each module exposes register(subparsers); the order here is the order in --help.
COMMAND_MODULES = ["shapes", "index", "info", "search", "duplicates", "classify", "serve", "demo"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `pixdex index: error: argument --batch-size: ...` and rc 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """--version, reading the package metadata only when asked."""

    def __call__(self, parser, namespace, values, option_string=None):
        from pixdex import __version__

        print(f"pixdex {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = Parser(
        prog="pixdex",
        description="Index image collections with CLIP-style models; search and tag them.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"pixdex.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pixdex` command; returns the process exit status.

    Every failure of every subcommand ends here as one line on stderr: bad input rc 2, a pipe closed by
    the reader (`| head`) quietly with rc 141 like other Unix tools, an interrupt 130, a bug rc 1
    (PIXDEX_DEBUG=1 shows its traceback).
    """
    command = "pixdex"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        command = f"pixdex {args.command}"
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except SystemExit as exc:  # argparse: --help, --version and usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        silence_stdout()
        return 141
    except PixdexError as exc:
        print(f"{command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if os.environ.get("PIXDEX_DEBUG"):
            raise
        print(f"{command}: internal error: {type(exc).__name__}: {one_line(str(exc))} "
              "(PIXDEX_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def one_line(text: str, limit: int = 500) -> str:
    """The first line of a message, shortened to `limit` characters."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def os_error_line(exc: OSError) -> str:
    """'PATH: reason' for an OSError (Errno numbers left out)."""
    reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def silence_stdout() -> None:
    """After a reader closed our stdout: point it at /dev/null so the exit flush raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
