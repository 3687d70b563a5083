"""Sources beyond local folders: fsspec URLs (s3://, gs://, file://, ...) and WebDataset tar shards.

A URL source is listed with fsspec (images chosen by extension: sniffing every object would mean
reading it) and read by the decoding workers. A tar shard is scanned once for its members' offsets;
a member is read by seeking to it, so workers never unpack the archive. WebDataset sidecars of a
sample (``KEY.txt``, ``KEY.cls``, ``KEY.json``) become metadata columns (caption, label, scalars).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator

from indexer.decode import IMAGE_EXTENSIONS, DecodeError
from indexer.errors import PixdexError
from indexer.items import COLUMN_PREFIX, RESERVED_COLUMNS, SourceItem

TAR_EXTENSIONS = (".tar",)


def is_url(spec: str) -> bool:
    """True for 'protocol://...' specs (fsspec URLs)."""
    head = str(spec).split("://", 1)[0]
    return "://" in str(spec) and head.isidentifier()


def local_path(spec: str) -> str:
    """A file:// URL as a plain local path (other specs unchanged), so local files keep local keys."""
    spec = str(spec)
    if spec.startswith("file://"):
        return spec[len("file://"):]
    return spec


def is_tar(spec: str) -> bool:
    return str(spec).lower().endswith(TAR_EXTENSIONS)


def _fs(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise PixdexError(f"source {url}: {str(exc).splitlines()[0]}") from None


def check_url(url: str) -> None:
    fs, path = _fs(url)
    try:
        exists = fs.exists(path)
    except Exception as exc:  # any backend error becomes one line naming the source
        raise PixdexError(f"source {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not exists:
        raise PixdexError(f"source {url} does not exist")


def _mtime(info: dict) -> float:
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return 0.0


def iter_url(spec: str) -> Iterator[SourceItem]:
    """Items of an fsspec URL: a folder (walked, images by extension), a tar shard, or one image."""
    fs, path = _fs(spec)
    root = fs.unstrip_protocol(path)  # canonical, as stored keys are: removals are scoped by it
    if is_tar(path):
        yield from iter_tar(root)
        return
    if not fs.isdir(path):
        info = fs.info(path)
        yield SourceItem(root, int(info.get("size") or 0), _mtime(info), root)
        return
    found = fs.find(path, detail=True)
    for name in sorted(found):
        info = found[name]
        base = os.path.basename(name)
        if base.startswith("."):
            continue
        url = fs.unstrip_protocol(name)
        if is_tar(name):
            yield from iter_tar(url, root=root)
        elif os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS:
            yield SourceItem(url, int(info.get("size") or 0), _mtime(info), root)


def _open(container: str):
    if is_url(container):
        fs, path = _fs(container)
        return fs.open(path, "rb")
    return open(container, "rb")  # returned to a with-block


def _sample_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def iter_tar(spec: str, root: str | None = None) -> Iterator[SourceItem]:
    """Image members of a (WebDataset) tar shard, keyed TAR#member, with their sidecar metadata."""
    container = spec if is_url(spec) else os.path.abspath(os.path.expanduser(spec))
    try:
        with _open(container) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            side: dict[str, dict] = {}
            for m in members:
                key, ext = _sample_key(m.name)
                if ext in ("txt", "cls", "json"):
                    side.setdefault(key, {})[ext] = tar.extractfile(m).read()
    except (OSError, tarfile.TarError) as exc:
        raise PixdexError(f"source {spec}: not a readable tar file ({exc})") from None
    for m in members:
        key, ext = _sample_key(m.name)
        if "." + ext.rsplit(".", 1)[-1] not in IMAGE_EXTENSIONS:
            continue
        yield SourceItem(f"{container}#{m.name}", int(m.size), float(m.mtime), root or container,
                         _sidecar_columns(side.get(key, {}), m.name), container=container,
                         offset=m.offset_data)


def _sidecar_columns(side: dict[str, bytes], member: str) -> dict:
    """Metadata from a sample's .txt (caption), .cls (label) and .json (scalar fields) members."""
    out: dict = {"source_file": os.path.basename(member)}
    if "txt" in side:
        out["caption"] = side["txt"].decode("utf-8", "replace").strip()
    if "cls" in side:
        out["label"] = side["cls"].decode("utf-8", "replace").strip()
    if "json" in side:
        try:
            record = json.loads(side["json"])
        except ValueError:
            record = {}
        if isinstance(record, dict):
            for k, v in record.items():
                if v is None or isinstance(v, (str, int, float, bool)):
                    out[COLUMN_PREFIX + k if k in RESERVED_COLUMNS else k] = v
    return out


def read_member(container: str, offset: int, size: int) -> bytes:
    """The bytes of one tar member, read by seeking (DecodeError with the reason when that fails)."""
    try:
        with _open(container) as fh:
            fh.seek(offset)
            data = fh.read(size)
    except OSError as exc:
        raise DecodeError(f"cannot read from {container}: {exc.strerror or exc}") from None
    if len(data) != size:
        raise DecodeError(f"truncated archive {container}: member needs {size} bytes, got {len(data)}")
    return data


def read_url(url: str) -> bytes:
    """An object's bytes through fsspec (DecodeError with the reason when that fails)."""
    try:
        fs, path = _fs(url)
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except Exception as exc:  # network/backend errors differ per filesystem
        raise DecodeError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
