"""Small helpers the subcommands share."""

from __future__ import annotations

import json
import re
import sys

from indexer.errors import PixdexError
from indexer.params import device_arg

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_bytes(text: str | None) -> int | None:
    """'4G', '512MiB', '1000000' -> bytes."""
    if text is None:
        return None
    m = _SIZE.match(text)
    if not m:
        raise PixdexError(f"must be a size such as 1000000, 512M or 4G, not {text!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower()))


def size_arg(text: str) -> int:
    """argparse `type=` for a size option: at least one byte."""
    import argparse

    try:
        size = parse_bytes(text)
    except PixdexError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not size:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, not {text!r}")
    return size


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def add_model_args(p, default: str | None, new_store_default: str | None = None) -> None:
    """--model (None: the store's own model, or new_store_default for a store not yet made) and --device."""
    said = (f"default {default}" if default else "default: the store's model"
            + (f"; {new_store_default} for a new store" if new_store_default else ""))
    p.add_argument("--model", default=default,
                   help=f"model: hub id, local save_pretrained folder, or a short name such as shapes-clip "
                   f"({said})")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
