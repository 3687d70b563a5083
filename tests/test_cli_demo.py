"""The application shell: --version/--help on every subcommand, and `pixdex demo` end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pixdex import __version__
from pixdex.cli import COMMAND_MODULES, build_parser, main


def test_version_and_help_on_every_subcommand(capsys):
    out = subprocess.run([sys.executable, "-m", "pixdex", "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == f"pixdex {__version__}"
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert {"shapes", "index", "info", "search", "classify", "classify-image", "eval", "serve",
            "demo"} <= names
    for name in sorted(names):
        assert main([name, "--help"]) == 0  # main returns the status, also for --help
        assert "usage: pixdex " + name in capsys.readouterr().out
    assert len(COMMAND_MODULES) == len(set(COMMAND_MODULES))


def test_user_errors_are_one_line_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pixdex", "info", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, shapes_clip):
    out = subprocess.run([sys.executable, "-m", "pixdex", "demo", str(tmp_path / "demo"), "--count", "80"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for marker in ("shapes world", "top-1", "indexed 80", "a red circle", "eval shape", "pixdex serve",
                   "--sort -taken", "2024-07-15T07:45:00-04:00", "group 1 (near, 4 files"):
        assert marker in text, (marker, text[-3000:])
    demo = tmp_path / "demo"
    assert (demo / "images" / "labels.csv").is_file()
    assert (demo / "store" / "manifest.json").is_file()
    assert (demo / "search.html").read_text().count("<img") >= 8
    assert list(demo.glob("eval-*/confusion*.png"))
    assert (demo / "duplicates.html").read_text().count("<figure") == 4
