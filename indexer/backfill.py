"""Bring rows of an older store up to date: add the photo columns (capture time, camera, GPS) in place.

Only the files' headers are read; nothing is decoded or re-encoded, and embeddings are untouched: the
metadata files of the shards concerned are rewritten (StoreWriter.set_columns).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from indexer.exif import PHOTO_COLUMNS, PhotoMeta, photo_meta_from_bytes, photo_meta_from_path
from indexer.items import SourceItem
from indexer.sources import item_bytes
from indexer.store import Store, StoreWriter


def fill_photo_columns(
    writer: StoreWriter,
    snap: Store,
    scanned: dict[str, SourceItem],
    skip: set[str],
    log: Callable[[str], None],
    progress: bool = True,
) -> tuple[int, int]:
    """Set the photo columns of stored rows whose shards lack them; returns (rows filled, rows with warnings).

    A row is read when its file was scanned now (and is not in `skip`: changed or gone paths), or is a
    local file whose size and mtime still match the stored ones; others keep waiting for a later run.
    """
    shards = writer.shards_lacking(PHOTO_COLUMNS)
    if not shards:
        return 0, 0
    meta = snap.metadata().select(["id", "path", "bytes", "mtime"])
    ranges = [
        (s["first_id"], s["first_id"] + s["rows"]) for s in (snap.manifest["shards"][k] for k in shards)
    ]
    ids = meta["id"].to_numpy()
    keep = np.zeros(len(ids), bool)
    for lo, hi in ranges:
        keep |= (ids >= lo) & (ids < hi)
    rows = meta.filter(pa.array(keep)).to_pylist() if keep.any() else []
    for row in rows:  # file names that are not UTF-8: the name the OS takes
        row["path"] = snap.real_path(row["path"])
    filled = warned = 0
    bar = tqdm(
        rows,
        unit="img",
        desc="photo metadata",
        disable=not progress or len(rows) < 100,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for row in bar:
        photo = _read(row, scanned, skip)
        if photo is None:
            continue
        writer.set_columns(row["id"], photo.columns())
        filled += 1
        if photo.problems:
            warned += 1
            log(f"pixdex index: {row['path']}: photo metadata: {'; '.join(photo.problems)}")
    bar.close()
    return filled, warned


def _read(row: dict, scanned: dict[str, SourceItem], skip: set[str]) -> PhotoMeta | None:
    path = row["path"]
    if path in skip:
        return None
    item = scanned.get(path)
    if item is not None:
        try:
            data = item_bytes(item)  # None for a plain file: its header is read from disk below
        except Exception:  # unreadable now: the row waits for a later run
            return None
        if data is not None:
            return photo_meta_from_bytes(data)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if item is None and (st.st_size != row["bytes"] or st.st_mtime != row["mtime"]):
        return None  # changed since it was indexed, and not part of this run: its own index run updates it
    return photo_meta_from_path(path)
