"""Where images come from: folders, path lists and Hugging Face `datasets`, as one item stream."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from indexer.decode import looks_like_image
from indexer.errors import PixdexError

DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class SourceItem:
    """One image to index: a file on disk or a row of a dataset (then `data` holds its bytes)."""

    key: str  # the store's `path`: absolute file path, or "DATASET#split/row"
    size: int
    mtime: float
    root: str  # the source it came from (removals are scoped to the sources scanned)
    extra: dict = field(default_factory=dict)  # source columns (datasets)
    data: bytes | None = None


Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def walk_folder(root: Path, include_hidden: bool = False, warn: Warn = _stderr) -> Iterator[Path]:
    """Image files under root, sorted, following symlinks once and skipping directory loops."""
    seen: set[tuple[int, int]] = set()

    def visit(directory: Path) -> Iterator[Path]:
        try:
            st = directory.stat()
        except OSError as exc:
            warn(f"skipping {directory}: {exc.strerror or exc}")
            return
        if (st.st_dev, st.st_ino) in seen:
            warn(f"skipping {directory}: directory loop or already visited (-> {os.path.realpath(directory)})")
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            warn(f"skipping {directory}: {exc.strerror or exc}")
            return
        for entry in entries:
            if entry.name.startswith(".") and not include_hidden:
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(path)
            elif entry.is_file(follow_symlinks=True) and looks_like_image(path):
                yield path

    yield from visit(root)


def file_item(path: Path, root: str) -> SourceItem | None:
    p = Path(os.path.abspath(path))
    try:
        st = p.stat()
    except OSError:
        return SourceItem(str(p), -1, -1.0, root)  # the decoder reports the reason
    return SourceItem(str(p), st.st_size, st.st_mtime, root)


def is_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS)


def read_path_list(list_file: Path) -> list[Path]:
    """Paths from a text file, one per line (relative to the file's folder; '#' starts a comment)."""
    out = []
    for line in list_file.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else list_file.parent / p)
    return out


def iter_source(spec: str, include_hidden: bool = False, warn: Warn = _stderr) -> Iterator[SourceItem]:
    """Items of one source: a folder, a path-list file, an image file, or a `datasets` dataset.

    Datasets: a folder saved with save_to_disk, a .parquet file (or `parquet:GLOB`),
    or `imagefolder:DIR`.
    """
    if spec.startswith(("imagefolder:", "parquet:")) or spec.endswith(".parquet"):
        yield from iter_dataset(spec, warn)
        return
    path = Path(spec).expanduser()
    root = str(Path(os.path.abspath(path)))
    if not path.exists():
        raise PixdexError(f"source {spec} does not exist")
    if is_dataset_dir(path):
        yield from iter_dataset(spec, warn)
    elif path.is_dir():
        for p in walk_folder(path, include_hidden, warn):
            yield file_item(p, root)
    elif looks_like_image(path):
        yield file_item(path, root)
    else:
        for p in read_path_list(path):
            yield file_item(p, str(p.absolute()))


def iter_sources(specs: list[str], include_hidden: bool = False, warn: Warn = _stderr) -> Iterator[SourceItem]:
    """Items of several sources; a path reached twice is yielded once."""
    seen: set[str] = set()
    for spec in specs:
        for item in iter_source(spec, include_hidden, warn):
            if item.key not in seen:
                seen.add(item.key)
                yield item


def load_dataset_source(spec: str):
    """A `datasets.Dataset` (first split if several) for a dataset source spec."""
    import datasets  # imported here: only dataset sources need it

    if spec.startswith("imagefolder:"):
        ds = datasets.load_dataset("imagefolder", data_dir=spec.split(":", 1)[1])
    elif spec.startswith("parquet:") or spec.endswith(".parquet"):
        files = spec.split(":", 1)[1] if spec.startswith("parquet:") else spec
        ds = datasets.load_dataset("parquet", data_files=files)
    else:
        ds = datasets.load_from_disk(spec)
    if isinstance(ds, datasets.DatasetDict):
        split = sorted(ds.keys())[0]
        return ds[split], split
    return ds, "train"


def iter_dataset(spec: str, warn: Warn = _stderr) -> Iterator[SourceItem]:
    """Rows of a dataset with an Image column; other columns become metadata."""
    import datasets

    ds, split = load_dataset_source(spec)
    image_cols = [n for n, f in ds.features.items() if isinstance(f, datasets.Image)]
    if not image_cols:
        raise PixdexError(f"dataset {spec} has no Image column (columns: {', '.join(ds.column_names)})")
    col = image_cols[0]
    ds = ds.cast_column(col, datasets.Image(decode=False))
    key_base = spec if ":" in spec.split("/")[0] else os.path.abspath(spec)
    others = [c for c in ds.column_names if c != col]
    for row, record in enumerate(ds):
        img = record[col] or {}
        data = img.get("bytes")
        if data is None and img.get("path"):
            try:
                data = Path(img["path"]).read_bytes()
            except OSError:
                data = b""
        extra = {c: record[c] for c in others if _scalar(record[c])}
        name = img.get("path") or f"{row}"
        yield SourceItem(f"{key_base}#{split}/{row}", len(data or b""), 0.0, key_base,
                         {**extra, "source_file": os.path.basename(str(name))}, data or b"")


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
