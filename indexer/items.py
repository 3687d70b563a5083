"""What every source yields: one item to index, and the metadata column names items may not take."""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.exif import PHOTO_COLUMNS

# Dataset columns that would clash with the store's own columns are stored under this prefix.
RESERVED_COLUMNS = {"id", "path", "path_raw", "bytes", "mtime", "width", "height", "sha256", "source_file",
                    *PHOTO_COLUMNS}
COLUMN_PREFIX = "dataset_"


@dataclass
class SourceItem:
    """One image to index: a file on disk or a row of a dataset (its bytes are read when needed)."""

    key: str  # the store's `path`: absolute file path, or "DATASET#split/row"
    size: int  # bytes; -1 when the file could not be stat'ed (the decoder reports why)
    mtime: float
    root: str  # the source it came from (removals are scoped to the sources scanned)
    extra: dict = field(default_factory=dict)  # source columns (datasets)
    data: bytes | None = None  # the bytes, for inputs that are not files
    sha256: str | None = None  # content hash when known at scan time (dataset rows)
    dataset: str | None = None  # dataset rows: the source spec and row to read the bytes from
    row: int = -1
    container: str | None = None  # tar members: the archive (path or URL) and the member's data offset
    offset: int = -1
    error: str | None = None  # found while scanning: why it cannot be indexed (goes to the error table)
