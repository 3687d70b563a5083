"""Where images come from: folders, path lists and Hugging Face `datasets`, as one item stream.

Source specs:
    DIR                 a folder, walked recursively (images found by content, not only by extension)
    FILE.txt            a text file of paths, one per line ('#' comments; relative to the file's folder)
    IMAGE               a single image file
    FILE.tar            a WebDataset tar shard (members read by offset; .txt/.cls/.json sidecars -> columns)
    URL                 any fsspec URL (s3://, gs://, file://, ...) of a folder, tar shard or image
    DIR (save_to_disk)  a dataset saved with `datasets`' save_to_disk (first split of a DatasetDict)
    FILE.parquet        parquet file(s) with an Image column (also `parquet:GLOB`)
    imagefolder:DIR     a `datasets` imagefolder (metadata.csv/jsonl columns become metadata)
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from indexer.decode import file_kind, looks_like_image
from indexer.errors import PixdexError
from indexer.items import COLUMN_PREFIX, RESERVED_COLUMNS, SourceItem
from indexer.remote import check_url, is_tar, is_url, iter_tar, iter_url, local_path, read_member, read_url

DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def walk_folder(root: Path, include_hidden: bool = False,
                warn: Warn = _stderr) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each image file under root, sorted by name, and (path, reason) for each entry
    that cannot be indexed and must say so: a dangling symlink, a symlink loop, a directory loop, a
    FIFO, socket or device, an unreadable folder. Symlinks are followed, each directory and file once;
    a folder reached again through another link is skipped with a warning (its files are listed once).
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def visit(directory: Path, ancestors: tuple[tuple[int, int], ...]) -> Iterator[tuple[Path, str | None]]:
        try:
            st = directory.stat()
        except OSError as exc:
            yield directory, unreachable_reason(directory, exc)
            return
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            yield directory, f"directory loop: links back to its own ancestor {os.path.realpath(directory)}"
            return
        if key in seen_dirs:
            warn(f"pixdex index: skipping {directory}: already visited (-> {os.path.realpath(directory)})")
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            yield directory, f"cannot list folder: {exc.strerror or exc}"
            return
        for entry in entries:
            if entry.name.startswith(".") and not include_hidden:
                continue
            path = Path(entry.path)
            try:
                fst = os.stat(path)  # follows symlinks
            except OSError as exc:
                yield path, unreachable_reason(path, exc)
                continue
            if stat.S_ISDIR(fst.st_mode):
                yield from visit(path, (*ancestors, key))
            elif not stat.S_ISREG(fst.st_mode):
                yield path, f"{file_kind(fst.st_mode)}, not a regular file"
            elif looks_like_image(path) and (fst.st_dev, fst.st_ino) not in seen_files:
                seen_files.add((fst.st_dev, fst.st_ino))
                yield path, None

    yield from visit(root, ())


def unreachable_reason(path: Path, exc: OSError) -> str:
    """Why stat() failed on a folder entry, in words (dangling link, link loop, permission, ...)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link leads back to itself)"
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return f"dangling symbolic link (to {os.readlink(path)}, which does not exist)"
    return exc.strerror or str(exc)


def file_item(path: Path, root: str, error: str | None = None) -> SourceItem:
    """A SourceItem for a file on disk (size -1 when it cannot be stat'ed;
    `error`: why it cannot be indexed)."""
    p = Path(os.path.abspath(path))
    try:
        st = p.stat()
    except OSError:
        return SourceItem(str(p), -1, -1.0, root, error=error)
    return SourceItem(str(p), st.st_size, st.st_mtime, root, error=error)


def is_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS)


def is_dataset_spec(spec: str) -> bool:
    return (spec.startswith(("imagefolder:", "parquet:")) or spec.endswith(".parquet")
            or is_dataset_dir(Path(spec)))


def read_path_list(list_file: Path) -> list[Path]:
    """Paths from a text file, one per line (relative to the file's folder; '#' starts a comment)."""
    try:
        text = list_file.read_text(errors="replace")
    except OSError as exc:
        raise PixdexError(f"cannot read path list {list_file}: {exc.strerror or exc}") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else list_file.parent / p)
    return out


def check_source(spec: str) -> None:
    """Raise PixdexError now (before any model loads) when a source cannot exist."""
    spec = local_path(spec)
    if is_url(spec):
        check_url(spec)
        return
    if spec.startswith(("imagefolder:", "parquet:")):
        target = spec.split(":", 1)[1]
        if spec.startswith("imagefolder:") and not Path(target).expanduser().is_dir():
            raise PixdexError(f"source {spec}: folder {target} does not exist")
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise PixdexError(f"source {spec} does not exist")
    mode = path.stat().st_mode
    # a FIFO may be a path list: <(find ...)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise PixdexError(f"source {spec} is {file_kind(mode)}, not a folder, file or path list")


class CheckedSources(tuple):
    """Source specs that passed check_source: iterating them checks nothing again (one remote call each)."""


def check_sources(specs: list[str]) -> CheckedSources:
    """Check every spec now (before any model loads); the result is iterated without checking again."""
    if isinstance(specs, CheckedSources):
        return specs
    for spec in specs:
        check_source(spec)
    return CheckedSources(str(s) for s in specs)


def iter_source(spec: str, include_hidden: bool = False, warn: Warn = _stderr) -> Iterator[SourceItem]:
    """Items of one source: a folder, a path-list file, an image file, or a `datasets` dataset."""
    check_source(spec)
    yield from _items_of(spec, include_hidden, warn)


def _items_of(spec: str, include_hidden: bool, warn: Warn) -> Iterator[SourceItem]:
    """Items of one checked source."""
    spec = local_path(spec)
    if is_url(spec):
        yield from iter_url(spec)
        return
    if is_tar(spec) and Path(spec).expanduser().is_file():
        yield from iter_tar(spec)
        return
    if is_dataset_spec(spec):
        yield from iter_dataset(spec, warn)
        return
    path = Path(spec).expanduser()
    root = os.path.abspath(path)
    if path.is_dir():
        for p, error in walk_folder(path, include_hidden, warn):
            yield file_item(p, root, error)
    elif looks_like_image(path):
        yield file_item(path, root)
    else:  # a list of paths; a listed folder is walked, a listed file is taken as it is
        for p in read_path_list(path):
            if p.is_dir():
                for q, error in walk_folder(p, include_hidden, warn):
                    yield file_item(q, os.path.abspath(p), error)
            else:
                yield file_item(p, os.path.abspath(p))


def iter_sources(specs: list[str], include_hidden: bool = False,
                 warn: Warn = _stderr) -> Iterator[SourceItem]:
    """Items of several sources in the order given; a path reached twice is yielded once."""
    seen: set[str] = set()
    for spec in check_sources(specs):
        for item in _items_of(spec, include_hidden, warn):
            if item.key not in seen:
                seen.add(item.key)
                yield item


# ---- datasets ---------------------------------------------------------------------------------
_OPEN_DATASETS: dict[str, tuple] = {}  # canonical spec -> (Dataset, image column), for reading rows later


def canonical_spec(spec: str) -> str:
    """The dataset spec with an absolute path, so stored keys do not depend on the working directory."""
    for prefix in ("imagefolder:", "parquet:"):
        if spec.startswith(prefix):
            target = spec[len(prefix):]
            return prefix + (target if any(c in target for c in "*?[")
                             else os.path.abspath(os.path.expanduser(target)))
    return os.path.abspath(os.path.expanduser(spec))


def load_dataset_source(spec: str):
    """A `datasets.Dataset` (first split if several) and that split's name, for a dataset source spec."""
    import datasets  # imported here: only dataset sources need it

    try:
        if spec.startswith("imagefolder:"):
            ds = datasets.load_dataset("imagefolder", data_dir=spec.split(":", 1)[1])
        elif spec.startswith("parquet:") or spec.endswith(".parquet"):
            files = spec.split(":", 1)[1] if spec.startswith("parquet:") else spec
            ds = datasets.load_dataset("parquet", data_files=files)
        else:
            ds = datasets.load_from_disk(spec)
    except (OSError, ValueError, FileNotFoundError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PixdexError(f"cannot open dataset {spec}: {first}") from None
    if isinstance(ds, datasets.DatasetDict):
        split = min(ds.keys())
        return ds[split], split
    return ds, str(ds.split) if ds.split else "train"


def iter_dataset(spec: str, warn: Warn = _stderr) -> Iterator[SourceItem]:
    """Rows of a dataset with an Image column; other scalar columns become metadata columns.

    Rows are keyed SPEC#split/row. Their bytes are hashed while scanning (rows have no mtime, so the
    hash tells changed rows) and read again, a batch at a time, when they are decoded.
    """
    import datasets

    key_base = canonical_spec(spec)
    ds, split = load_dataset_source(key_base)
    image_cols = [n for n, f in ds.features.items() if isinstance(f, datasets.Image)]
    if not image_cols:
        raise PixdexError(f"dataset {spec} has no Image column (columns: {', '.join(ds.column_names)})")
    col = image_cols[0]
    ds = ds.cast_column(col, datasets.Image(decode=False))
    _OPEN_DATASETS[key_base] = (ds, col)
    labels = {c: f for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    others = [c for c in ds.column_names if c != col]
    for row, record in enumerate(ds):
        data = _image_bytes(record[col])
        extra = {}
        for c in others:
            value = record[c]
            if c in labels and isinstance(value, int) and value >= 0:
                value = labels[c].int2str(value)  # store class names, not indices
            if _scalar(value):
                extra[COLUMN_PREFIX + c if c in RESERVED_COLUMNS else c] = value
        name = (record[col] or {}).get("path") or str(row)
        extra["source_file"] = os.path.basename(str(name))
        yield SourceItem(f"{key_base}#{split}/{row}", len(data), 0.0, key_base, extra,
                         sha256=hashlib.sha256(data).hexdigest(), dataset=key_base, row=row)


def _image_bytes(value: dict | None) -> bytes:
    """The encoded bytes of an undecoded `datasets.Image` value (embedded, or read from its path)."""
    value = value or {}
    if value.get("bytes") is not None:
        return value["bytes"]
    if value.get("path"):
        try:
            return Path(value["path"]).read_bytes()
        except OSError:
            return b""
    return b""


def item_bytes(item: SourceItem) -> bytes | None:
    """The bytes of an item that is not a plain file (None: read item.key from disk)."""
    if item.data is not None:
        return item.data
    if item.container is not None:
        return read_member(item.container, item.offset, item.size)
    if item.dataset is not None:
        if item.dataset not in _OPEN_DATASETS:  # a worker of another process (Ray): open it here
            import datasets

            ds, _ = load_dataset_source(item.dataset)
            col = next(n for n, f in ds.features.items() if isinstance(f, datasets.Image))
            _OPEN_DATASETS[item.dataset] = (ds.cast_column(col, datasets.Image(decode=False)), col)
        ds, col = _OPEN_DATASETS[item.dataset]
        return _image_bytes(ds[item.row][col])
    if is_url(item.key):
        return read_url(item.key)
    return None


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
