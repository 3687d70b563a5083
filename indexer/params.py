"""Checked parameters: one rule per numeric option, shared by the CLI (argparse `type=`), the Python API
and the HTTP API, so that a bad value is refused with a one-line PixdexError before any work starts."""

from __future__ import annotations

import argparse
import math
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import InvalidValue, PixdexError
from indexer.store_format import not_a_store

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
_DEVICE = re.compile(r"^(auto|[a-z]+)(?::(\d+))?$")


@dataclass(frozen=True)
class Bound:
    """The allowed values of one numeric parameter: an int or a finite float in [low, high]."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    meaning: str = ""  # what a special value means, for the message (e.g. "0 = no limit")
    above: bool = False  # low itself is not allowed

    def check(self, value, name: str):
        """`value` as this bound's kind; PixdexError naming `name` when it is not allowed."""
        ok = self._value(value)
        if ok is None:
            raise InvalidValue(f"{name} {self.explain(value)}")
        return ok

    def parse(self, text: str, name: str):
        """Command-line text checked as this bound (int('1e3') and float('nan') are refused too)."""
        return self.check(self._number(text), name)

    def arg(self) -> Callable[[str], int | float]:
        """An argparse `type=`: argparse puts the option's name in front of the message."""
        def parse(text: str):
            ok = self._value(self._number(text))
            if ok is None:
                raise argparse.ArgumentTypeError(f"must be {self._what()}, not {_short(text)}")
            return ok

        parse.__name__ = self.kind.__name__  # argparse names the type in some messages
        return parse

    def explain(self, value) -> str:
        """'must be a whole number from 1 to 64, not -1'."""
        return f"must be {self._what()}, not {_short(repr(value))}"

    def _number(self, text):
        if not isinstance(text, str):
            return text
        try:
            return int(text.strip(), 10) if self.kind is int else float(text)
        except ValueError:
            return text

    def _value(self, value) -> int | float | None:
        """The value as int/float when it is allowed, else None."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None
        if self.kind is int:
            if not isinstance(value, numbers.Integral) and not (math.isfinite(value)
                                                                and float(value).is_integer()):
                return None
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                return None
        if self.low is not None and (value < self.low or self.above and value == self.low):
            return None
        if self.high is not None and value > self.high:
            return None
        return value

    def _what(self) -> str:
        kind = "a whole number" if self.kind is int else "a number"
        fmt = (lambda x: str(int(x))) if self.kind is int else (lambda x: f"{x:g}")
        if self.low is not None and self.high is not None:
            span = f" {'above' if self.above else 'from'} {fmt(self.low)} " \
                f"{'and <=' if self.above else 'to'} {fmt(self.high)}"
        elif self.low is not None:
            span = f" {'>' if self.above else '>='} {fmt(self.low)}"
        elif self.high is not None:
            span = f" <= {fmt(self.high)}"
        else:
            span = ""
        return kind + span + (f" ({self.meaning})" if self.meaning else "")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the rules (names as the Python API calls them; the CLI options are the same with dashes) --------------
BATCH_SIZE = Bound(int, 1, 65_536)  # images per model forward pass
WORKERS = Bound(int, 0, 256, "0 = decode in this process")  # decoding processes / embedding actors
SHARD_ROWS = Bound(int, 1, 1 << 22)  # rows per embedding shard (held in memory until committed)
MAX_PIXELS = Bound(int, 0, None, "0 = no limit")  # decompression-bomb guard
DEFAULT_MAX_PIXELS = 100_000_000  # 100 Mpx: a 10k x 10k photo passes, a 30k x 30k bomb does not
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq", "sharded", "sharded-parts")  # --index
IMAGE_PIXELS = Bound(int, 1, None)  # a pixel limit that must stay a limit (the server's uploads)
GPUS_PER_WORKER = Bound(float, 0, 64)
BATCH_ROWS = Bound(int, 1, 1 << 24)  # stored embeddings per tagging block
TOP_K = Bound(int, 1, 1_000_000)  # labels per image
SCORE_THRESHOLD = Bound(float, 0, 1)  # a label's probability-like score
K = Bound(int, 1, 10_000_000)  # search results per query
SUGGEST = Bound(int, 0, 100_000, "0 = no suggestions")  # images a tagging run proposes to label next
COSINE = Bound(float, -1, 1)  # a search score threshold
DEDUP = Bound(float, 0, 1, above=True)  # drop results this close to a better one
TIMEOUT = Bound(float, 0, 3600, above=True)  # seconds to wait for an image URL
COUNT = Bound(int, 1, 1_000_000)  # generated images
SEED = Bound(int, 0, 2**63 - 1)
PORT = Bound(int, 0, 65_535, "0 = any free port")
LIMIT = Bound(int, 1, None)  # a server bound such as max-k or max-labels
# cosine above which two stored images are duplicate candidates
DUP_THRESHOLD = Bound(float, 0, 1, above=True)
PIXEL_TOLERANCE = Bound(float, 0, 255)  # the duplicate pixel check's largest cell difference
DEFAULT_DUP_THRESHOLD = 0.85  # reaches moderately cropped copies with CLIP-style models (BENCHMARKS.md)
# copies stay below, look-alikes above, on the benchmark collection (BENCHMARKS.md)
DEFAULT_PIXEL_TOLERANCE = 8.5


def check_device(device: str, name: str = "device") -> str:
    """A device string torch understands and this machine has: auto, cpu, cuda, cuda:N, mps, xpu.

    Availability is asked of torch only for accelerators (so `cpu` and `auto` stay cheap)."""
    if not isinstance(device, str) or not (m := _DEVICE.match(device.strip().lower())):
        raise PixdexError(f"{name} {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    kind, index = m.group(1), m.group(2)
    if kind == "auto" and index is None or kind == "cpu":
        return f"{kind}:{index}" if index is not None else kind
    if kind not in DEVICE_TYPES:
        raise PixdexError(f"{name} {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise PixdexError(f"{name} {device!r}: CUDA is not available ({why}); use --device cpu or auto")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise PixdexError(f"{name} {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise PixdexError(f"{name} {device!r}: Apple MPS is not available here; use --device cpu or auto")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise PixdexError(f"{name} {device!r}: no Intel XPU is available here; use --device cpu or auto")
    return f"{kind}:{index}" if index is not None else kind


def device_arg(text: str) -> str:
    """argparse `type=` for --device."""
    try:
        return check_device(text, "device")
    except PixdexError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_output_file(path: str | os.PathLike, name: str = "output", make_parents: bool = False) -> Path:
    """A file path that can be written: not a folder, in a folder we may write to (that exists, unless
    `make_parents`: then the nearest existing ancestor must be a writable folder)."""
    if not str(path).strip():
        raise PixdexError(f"{name}: empty path")
    p = Path(path).expanduser()
    if p.is_dir():
        raise PixdexError(f"{name} {path}: is a folder; give a file name")
    if p.exists() and not p.is_file():
        raise PixdexError(f"{name} {path}: exists and is not a regular file")
    folder = p.absolute().parent
    while make_parents and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise PixdexError(f"{name} {path}: {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PixdexError(f"{name} {path}: permission denied")
    return p


def check_output_folder(path: str | os.PathLike, name: str = "output folder") -> Path:
    """A folder to write into: an existing writable folder, or one that can be made (its nearest existing
    ancestor is a writable folder)."""
    if not str(path).strip():
        raise PixdexError(f"{name}: empty path")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise PixdexError(f"{name} {path}: exists and is not a folder")
    folder = p.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise PixdexError(f"{name} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PixdexError(f"{name} {path}: permission denied")
    return p


def _path_arg(check: Callable[[str], object], doc: str) -> Callable[[str], str]:
    """An argparse `type=` that runs an output-path check and turns its PixdexError into argparse's."""
    def parse(text: str) -> str:
        try:
            check(text)
        except PixdexError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__doc__ = doc
    return parse


output_folder_arg = _path_arg(lambda t: check_output_folder(t, "folder"),
                              "argparse `type=` for an output folder option (--out-dir).")
output_file_arg = _path_arg(lambda t: check_output_file(t, "file"),
                            "argparse `type=` for an output file option whose folder must exist (--out).")
new_file_arg = _path_arg(lambda t: check_output_file(t, "file", make_parents=True),
                         "argparse `type=` for an output file option whose missing folders are created "
                         "(--html).")


def store_arg(text: str) -> str:
    """An argparse `type=` for an existing store: a local path without a manifest is refused before any
    import or work (a URL is checked when it is opened)."""
    problem = "" if "://" in text else not_a_store(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
