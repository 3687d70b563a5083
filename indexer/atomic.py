"""Crash-safe file writes: temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.errors import StoreWriteError

PROBE_BYTES = 65536  # a file's probe hash covers its first and last 64 KiB: cheap to check on every open


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    """Call writer(tmp_path), fsync it, then rename over path: readers see old or new, never half.

    A failed write (disk full, read-only folder) leaves `path` as it was and raises StoreWriteError.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise StoreWriteError(f"cannot write {path}: {exc.strerror or _first_line(exc)}", exc.errno) from exc
    except RuntimeError as exc:  # FAISS reports a failed fwrite this way
        raise StoreWriteError(f"cannot write {path}: {_first_line(exc)}") from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def file_digest(path: Path) -> dict:
    """{"bytes", "sha256", "probe"} of a file: the manifest's record of what it wrote."""
    full = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            full.update(block)
            size += len(block)
    return {"bytes": size, "sha256": full.hexdigest(), "probe": probe_digest(path, size)}


def probe_digest(path: Path, size: int) -> str:
    """sha256 of a file's first and last PROBE_BYTES (a swapped or rewritten file shows at once)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(PROBE_BYTES))
        fh.seek(max(0, size - PROBE_BYTES))
        h.update(fh.read(PROBE_BYTES))
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def save_json(path: Path, obj: dict) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str)))


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, array)

    write_atomic(path, write)


def save_parquet(path: Path, table: pa.Table) -> None:
    write_atomic(path, lambda p: pq.write_table(table, p))
