"""The collection store: a directory that search and classify open later.

The format (file names, what a manifest references, the index record) is defined in
``indexer.store_format``.
Ids are assigned in order and never reused, so shard k holds the contiguous id range
[first_id, first_id + rows); the shards (and "gaps", id ranges `pixdex repair` had to drop) tile
[0, next_id). Shard numbers NNNNNN come from the manifest's "next_shard" counter and never name a
file already on disk. The manifest's "files" records every file it names: bytes (checked on every
open), sha256 (checked by `pixdex info --check`) and probe (sha256 of the first and last 64 KiB,
checked when a file is first read). Files replaced by a writer session stay on disk until the end
of the next one (manifest "retained"), so a reader that opened an older snapshot keeps working meanwhile.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.arrow_values import id_array, one_chunk, take, validity
from indexer.atomic import file_digest, probe_digest, save_json, save_npy, save_parquet, sha256_file
from indexer.errors import (
    InvalidType,
    InvalidValue,
    ModelMismatchError,
    PixdexError,
    StoreDamaged,
    StoreFileMissing,
    StoreWriteError,
)
from indexer.exif import PHOTO_KINDS
from indexer.faiss_index import SHARDED_TYPES, apply_search_params, read_sharded
from indexer.ids import describe
from indexer.remote_store import open_path
from indexer.store_format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    NAMED,
    OWNED,
    SHARD_FILE,
    TAG_SET_NAME,
    IndexRecord,
    deleted_file,
    embeddings_file,
    errors_file,
    metadata_file,
    not_a_store,
    referenced_files,
    shard_number,
    tagger_file,
    tags_file,
)

if TYPE_CHECKING:  # the encoder pulls in torch; reading a store does not need it
    from indexer.models import ModelInfo

PATH_RAW = "path_raw"  # the bytes of a file name that is not valid UTF-8 (null for every other path)
ERROR_SCHEMA = pa.schema(
    [("path", pa.string()), ("reason", pa.string()), ("bytes", pa.int64()), ("mtime", pa.float64())]
)
BASE_COLUMNS = ["id", "path", "bytes", "mtime", "width", "height", "sha256"]
_ARROW_KINDS = {"timestamp": pa.timestamp("s"), "text": pa.string(), "float": pa.float64(), "int8": pa.int8()}
# indexer.exif's columns
PHOTO_SCHEMA = pa.schema([(name, _ARROW_KINDS[kind]) for name, kind in PHOTO_KINDS.items()])
MAX_PREFIX_CANDIDATES = 8  # items sharing a digest's first 8 bytes checked one by one (more: a scan)
PATH_CACHE_SHARDS = 16  # shards whose path columns a Store keeps in memory (4,096 rows each by default)
MODEL_KEY = b"pixdex.model"  # metadata parquet files carry the model record (repair without a manifest)


def sorted_unique(values) -> np.ndarray:
    """np.unique(values) without importing numpy.ma (np.unique does: ~40 ms of a cold query)."""
    a = np.sort(np.asarray(values).ravel())
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def _hex_prefix(digest: str) -> np.uint64 | None:
    """The first 8 bytes of a hex sha256 as an unsigned integer (None for anything else)."""
    if len(digest) != 64:
        return None
    try:
        return np.uint64(int(digest[:16], 16))
    except ValueError:
        return None


def _hex_prefixes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """_hex_prefix of every row of a string column, read from its buffers (no Python strings), and which
    rows hold a 64-character lower-case hex digest."""
    n = len(column)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    arr = one_chunk(column)
    if arr.type != pa.string():
        arr = arr.cast(pa.string())
    offsets = np.frombuffer(arr.buffers()[1], np.int32, count=n + 1, offset=arr.offset * 4)
    body = arr.buffers()[2]
    data = np.frombuffer(body, np.uint8) if body is not None else np.zeros(0, np.uint8)
    ok = (offsets[1:] - offsets[:-1]) == 64
    valid = validity(arr)
    if valid is not None:
        ok &= valid
    starts = np.where(ok, offsets[:-1], 0)
    chars = data[starts[:, None] + np.arange(16)] if len(data) >= 16 else np.zeros((n, 16), np.uint8)
    digit = np.where(chars >= 97, chars - 87, chars - 48).astype(np.uint64)  # '0'-'9', 'a'-'f'
    ok &= ((chars >= 48) & (chars <= 57) | (chars >= 97) & (chars <= 102)).all(axis=1)
    key = np.zeros(n, np.uint64)
    for i in range(16):
        key = (key << np.uint64(4)) | digit[:, i]
    return key, ok


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ---- paths that are not valid UTF-8 --------------------------------------------------------------
def split_path(path: str) -> tuple[str, bytes | None]:
    """(text for the path column, raw bytes or None). Python reads a file name that is not valid UTF-8
    with surrogate escapes; parquet strings must be UTF-8, so such a name is stored as its printable
    escaped form (the byte 0xff as the four characters \\xff) plus its bytes, and comes back unchanged."""
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace"), raw


def display_path(path: str) -> str:
    """A path as printable UTF-8 text (undecodable bytes as \\xNN), for output and messages."""
    try:
        return split_path(path)[0]
    except UnicodeEncodeError:  # lone surrogates that no file system produced
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def join_path(text: str, raw: bytes | None) -> str:
    """The path split_path() stored: the file name as Python's os functions take it."""
    return text if raw is None else bytes(raw).decode("utf-8", "surrogateescape")


def _with_raw_paths(table: pa.Table, paths: list[str]) -> pa.Table:
    """`table` with its path column set from `paths`, and a path_raw column when any needs it."""
    parts = [split_path(p) for p in paths]
    table = table.set_column(table.column_names.index("path"), "path",
                             pa.array([t for t, _ in parts], pa.string()))
    if any(r is not None for _, r in parts):
        table = table.append_column(PATH_RAW, pa.array([r for _, r in parts], pa.binary()))
    return table


def _pop_raw_paths(table: pa.Table) -> tuple[pa.Table, dict[str, str]]:
    """(table without path_raw, {stored text: real path}) for the rows whose name is not UTF-8."""
    if PATH_RAW not in table.column_names:
        return table, {}
    raws = table[PATH_RAW].to_pylist()
    texts = table["path"].to_pylist()
    real = {t: join_path(t, r) for t, r in zip(texts, raws) if r is not None}
    return table.drop_columns([PATH_RAW]), real


# ---- what a manifest names -----------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def check_manifest(path: Path, m) -> None:
    """Refuse a manifest that is not a whole, self-consistent record (StoreDamaged naming it)."""
    mf = path / MANIFEST

    def bad(why: str) -> StoreDamaged:
        return StoreDamaged(mf, why, path)

    if not isinstance(m, dict):
        raise bad("not a JSON object")
    if m.get("format") != FORMAT or not isinstance(m.get("version"), int) or m["version"] > FORMAT_VERSION:
        raise PixdexError(f"store {path} has an unsupported format/version {m.get('version')}")
    for key, typ in (("model", dict), ("dim", int), ("shards", list), ("next_id", int), ("generation", int),
                     ("counts", dict), ("created", str), ("updated", str)):
        if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
            raise bad(f"'{key}' is missing or not a {typ.__name__}")
    if not all(isinstance(m["model"].get(k), str) for k in ("name", "fingerprint")) or m["dim"] < 1:
        raise bad("the model record is incomplete")
    segments = []
    for k, s in enumerate(m["shards"]):
        if not (isinstance(s, dict) and isinstance(s.get("embeddings"), str)
                and isinstance(s.get("metadata"), str) and isinstance(s.get("first_id"), int)
                and isinstance(s.get("rows"), int) and s["rows"] >= 1 and s["first_id"] >= 0):
            raise bad(f"shard entry {k} is incomplete")
        segments.append((s["first_id"], s["rows"], f"shard entry {k}"))
    for g in m.get("gaps") or []:
        if not (isinstance(g, list) and len(g) == 2 and all(isinstance(x, int) for x in g)
                and 0 <= g[0] < g[1]):
            raise bad(f"gap {g!r} is not an id range")
        segments.append((g[0], g[1] - g[0], "gap"))
    firsts = [s["first_id"] for s in m["shards"]]
    if firsts != sorted(firsts):
        raise bad("shard entries are out of id order")
    end = 0
    for first, rows, what in sorted(segments):
        if first > end:
            raise bad(f"no shard holds ids {end}..{first - 1} (a shard entry is missing)")
        if first < end:
            raise bad(f"{what} overlaps ids below {end}")
        end = first + rows
    if end != m["next_id"]:
        raise bad(f"the shards end at id {end} but next_id is {m['next_id']} (a shard entry is missing)")
    rows = sum(s["rows"] for s in m["shards"])
    counts = m["counts"]
    if counts.get("rows") != rows or counts.get("items") != rows - counts.get("deleted", 0):
        raise bad(f"counts {counts} do not match the {rows} rows of its shards")
    for rel in referenced_files(m):
        if not isinstance(rel, str) or not NAMED.match(rel):
            raise bad(f"names a file {rel!r} that is not a store file")


class Store:
    """A read-only snapshot of a store: what the manifest said when it was opened."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._shards = manifest["shards"]
        self._first_ids = np.array([s["first_id"] for s in self._shards], dtype=np.int64)
        self._emb_cache: dict[int, np.ndarray] = {}
        self._probed: set[str] = set()  # files whose probe hash was checked in this snapshot
        self._meta: pa.Table | None = None
        self._real_paths: dict[str, str] = {}  # stored text -> real path, for names that are not UTF-8
        self._shard_paths: dict[int, pa.Array] = {}  # the last few shards' path columns, by row
        self._content: tuple[np.ndarray, np.ndarray] | None = None  # see ids_with_content
        self._deleted = self._load_deleted()

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        """Open the last committed state of the store at `path` (a local path, file:// or any fsspec URL).

        The manifest is checked for consistency and every file it names for its recorded size
        (StoreDamaged names the first file that is missing or the wrong size).
        """
        path = open_path(path)
        problem = not_a_store(path)
        if problem:
            raise PixdexError(problem)
        for attempt in range(5):
            text = _read_manifest_bytes(path)
            try:
                store = cls(path, parse_manifest(path, text))
                store.check_sizes()
                return store
            except StoreDamaged:
                if attempt == 4 or _read_manifest_bytes(path) == text:
                    raise
                # a writer committed meanwhile and swept files of the state just read: read it again
        raise AssertionError("unreachable")

    # ---- facts ------------------------------------------------------------------------------
    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        """Live items (stored rows minus removed ones)."""
        return int(self.manifest["counts"]["items"])

    def __len__(self) -> int:
        return self.count

    @property
    def index_info(self) -> dict:
        return self.manifest.get("index") or {}

    @property
    def deleted_ids(self) -> np.ndarray:
        return self._deleted

    def check_model(self, info: ModelInfo) -> None:
        """Refuse a model other than the one the store was built with."""
        mine = self.model
        if not info.matches(mine["fingerprint"]) or info.dim != self.dim:
            raise ModelMismatchError(
                f"store {self.path} was built with model '{mine['name']}' "
                f"(fingerprint {mine['fingerprint']}, "
                f"dim {self.dim}); '{info.name}' (fingerprint {info.fingerprint}, dim {info.dim}) "
                f"cannot be used "
                f"with it. Use --model {mine['name']} or index into a new store."
            )

    # ---- self-checks ------------------------------------------------------------------------
    def damaged(self, rel: str, reason: str) -> StoreDamaged:
        return StoreDamaged(self.path / rel, reason, self.path)

    def missing(self, rel: str) -> StoreFileMissing:
        return StoreFileMissing(self.path / rel, self.path)

    def check_sizes(self) -> None:
        """Every file the manifest names exists with its recorded size (embedding shards without a
        record: big enough for their rows). Cheap: one stat per file."""
        files = self.manifest.get("files") or {}
        for rel in sorted(referenced_files(self.manifest)):
            try:
                size = (self.path / rel).stat().st_size
            except FileNotFoundError:
                raise self.missing(rel) from None
            except OSError as exc:
                raise self.damaged(rel, exc.strerror or _first_line(exc)) from None
            rec = files.get(rel)
            if rec is not None and size != rec.get("bytes"):
                raise self.damaged(rel, f"{size} bytes where the manifest records {rec.get('bytes')} "
                                        f"(truncated or replaced)")
        for s in self._shards:
            if s["embeddings"] not in files:
                need = s["rows"] * self.dim * 2
                size = (self.path / s["embeddings"]).stat().st_size
                if not need < size <= need + 4096:
                    raise self.damaged(s["embeddings"],
                                       f"{size} bytes cannot hold {s['rows']} float16 rows of "
                                       f"dim {self.dim}")

    def probe(self, rel: str) -> None:
        """Check a file's probe hash (first and last 64 KiB) once per snapshot, when it is first read."""
        rec = (self.manifest.get("files") or {}).get(rel)
        if rel in self._probed or not rec or "probe" not in rec:
            return
        path = self.path / rel
        try:
            size = path.stat().st_size
            ok = size == rec["bytes"] and probe_digest(path, size) == rec["probe"]
        except FileNotFoundError:
            raise self.missing(rel) from None
        if not ok:
            raise self.damaged(rel, "its content is not what the manifest recorded (swapped or overwritten)")
        self._probed.add(rel)

    def check_probes(self) -> None:
        """Sizes and probe hashes of every named file (a few reads per file): swapped or rewritten files
        show before a writer builds on them or `info` calls the store healthy."""
        self.check_sizes()
        for rel in sorted(referenced_files(self.manifest)):
            self.probe(rel)

    def verify(self, full: bool = True, progress=None) -> list[StoreDamaged]:
        """Every problem found: sizes, then each file read and checked (full: its sha256 against the record).

        `progress(nbytes)` is called as files are hashed. Returns [] for a healthy store.
        """
        try:
            self.check_sizes()
        except StoreDamaged as exc:
            return [exc]
        problems: list[StoreDamaged] = []
        files = self.manifest.get("files") or {}
        for rel in sorted(referenced_files(self.manifest)):
            rec = files.get(rel)
            if full and rec and "sha256" in rec:
                digest = sha256_file(self.path / rel)
                if progress:
                    progress(rec["bytes"])
                if digest != rec["sha256"]:
                    problems.append(self.damaged(rel, "sha256 differs from the manifest's record "
                                                      "(corrupted, swapped or overwritten)"))
        bad = {p.path for p in problems}
        checks = [(s["embeddings"], lambda k=k: self._map_embeddings(k)) for k, s in enumerate(self._shards)]
        checks += [(s["metadata"], lambda k=k: self.read_shard_metadata(k))
                   for k, s in enumerate(self._shards)]
        checks += [(f, lambda f=f: self._read_tags_file(f))
                   for f in (self.manifest.get("tags") or {}).values()]
        checks += [(f, lambda f=f: self._read_tagger_file(f))
                   for f in (self.manifest.get("taggers") or {}).values()]
        if self.manifest.get("errors"):
            checks.append((self.manifest["errors"], self._error_table))
        if self.index_info.get("file"):
            checks.append((self.index_info["file"], self.load_index))
        for rel, check in checks:
            if str(self.path / rel) not in bad:
                try:
                    check()
                except StoreDamaged as exc:
                    problems.append(exc)
        return problems

    # ---- embeddings -------------------------------------------------------------------------
    def _load_deleted(self) -> np.ndarray:
        name = self.manifest.get("deleted")
        if not name:
            return np.zeros(0, np.int64)
        try:
            ids = np.load(self.path / name)
        except FileNotFoundError:
            raise self.missing(name) from None
        except (ValueError, OSError, EOFError) as exc:
            raise self.damaged(name, f"not a readable .npy array ({_first_line(exc)})") from None
        want = self.manifest["counts"].get("deleted", len(ids))
        if ids.dtype.kind not in "iu" or ids.ndim != 1 or len(ids) != want:
            raise self.damaged(name, f"holds {ids.dtype} {ids.shape}, the manifest expects {want} int64 ids")
        return ids.astype(np.int64, copy=False)

    def _map_embeddings(self, k: int) -> np.ndarray:
        """Shard k's embeddings memory-mapped, after checking shape, dtype and the probe hash."""
        s = self._shards[k]
        rel = s["embeddings"]
        self.probe(rel)
        try:
            emb = np.load(self.path / rel, mmap_mode="r")
        except FileNotFoundError:
            raise self.missing(rel) from None
        except (ValueError, OSError, EOFError) as exc:
            raise self.damaged(rel, f"not a readable .npy array ({_first_line(exc)})") from None
        if emb.dtype != np.float16 or emb.shape != (s["rows"], self.dim):
            raise self.damaged(rel, f"holds {emb.dtype} {emb.shape}, the manifest says float16 "
                                    f"({s['rows']}, {self.dim})")
        return emb

    def shard_embeddings(self, k: int) -> np.ndarray:
        """Shard k's float16 embeddings, memory-mapped (rows include removed ones)."""
        if k not in self._emb_cache:
            self._emb_cache[k] = self._map_embeddings(k)
        return self._emb_cache[k]

    def shard_ids(self, k: int) -> np.ndarray:
        s = self._shards[k]
        return np.arange(s["first_id"], s["first_id"] + s["rows"], dtype=np.int64)

    def iter_embeddings(self, batch_rows: int = 65536, start_id: int = 0,
                        shards: Iterable[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float16 embeddings) of live rows in id order, a bounded batch at a time (ids >= start_id;
        only the given shard numbers when `shards` is set)."""
        for k in range(len(self._shards)) if shards is None else shards:
            s = self._shards[k]
            if s["first_id"] + s["rows"] <= start_id:
                continue
            ids_all = self.shard_ids(k)
            # mapped afresh, not cached: a full pass over a big store must not keep every shard's
            # pages mapped (they would count as this process's resident memory)
            emb = self._emb_cache.get(k)
            emb = emb if emb is not None else self._map_embeddings(k)
            for start in range(0, len(ids_all), batch_rows):
                ids = ids_all[start : start + batch_rows]
                block = emb[start : start + batch_rows]
                if len(self._deleted):
                    keep = ~np.isin(ids, self._deleted)
                    if not keep.all():
                        ids, block = ids[keep], block[keep]
                if len(ids):
                    yield ids, np.asarray(block)

    def ids(self) -> np.ndarray:
        """All live ids in order."""
        parts = [self.shard_ids(k) for k in range(len(self._shards))]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return ids[~np.isin(ids, self._deleted)] if len(self._deleted) else ids

    def embeddings(self, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(ids, embeddings) of every live row, loaded into memory: for small stores and tools."""
        ids, blocks = [], []
        for i, e in self.iter_embeddings():
            ids.append(i)
            blocks.append(e.astype(dtype))
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), dtype)
        return np.concatenate(ids), np.concatenate(blocks)

    def locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row in shard) for each id; PixdexError for ids not stored or removed."""
        ids = as_ids(ids, self)
        shard = np.searchsorted(self._first_ids, ids, side="right") - 1
        bad = shard < 0
        ok = ~bad
        rows = np.zeros_like(ids)
        if ok.any():
            rows[ok] = ids[ok] - self._first_ids[shard[ok]]
            sizes = np.array([s["rows"] for s in self._shards], dtype=np.int64)
            bad[ok] |= rows[ok] >= sizes[shard[ok]]
        if len(self._deleted):
            bad |= np.isin(ids, self._deleted)
        if bad.any():
            raise PixdexError(f"unknown id {int(ids[bad][0])} in store {self.path} ({self.count} items)")
        return shard, rows

    def vectors(self, ids, cache: bool = True) -> np.ndarray:
        """float32 embeddings for the given live ids, in that order.

        cache=False maps each shard only while its rows are read: for samples spread over a big
        store, whose mapped pages would otherwise all stay resident in this process.
        """
        shard, rows = self.locate(ids)
        out = np.zeros((len(shard), self.dim), np.float32)
        for k in sorted_unique(shard):
            sel = shard == k
            if cache:
                out[sel] = self.shard_embeddings(int(k))[rows[sel]]
            else:
                emb = self._map_embeddings(int(k))
                out[sel] = emb[rows[sel]]
                del emb
        return out

    # ---- metadata ---------------------------------------------------------------------------
    def read_shard_metadata(self, k: int, columns: list[str] | None = None) -> pa.Table:
        """Shard k's metadata (only `columns` when given; id always), checked: one row per id of the shard
        in order. Names that are not UTF-8 keep their path_raw column here (see metadata())."""
        s = self._shards[k]
        rel = s["metadata"]
        self.probe(rel)
        try:
            with pq.ParquetFile(self.path / rel) as f:
                names = f.schema_arrow.names
                want = None if columns is None else ["id", *[c for c in columns if c != "id"]]
                if want is not None and "path" in want and PATH_RAW in names:
                    want.append(PATH_RAW)
                missing = [c for c in (want or BASE_COLUMNS) if c not in names]
                if missing:
                    raise self.damaged(rel, f"has no {missing[0]!r} column")
                table = f.read(columns=want)
        except FileNotFoundError:
            raise self.missing(rel) from None
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise self.damaged(rel, f"not a readable parquet file ({_first_line(exc)})") from None
        ids = id_array(table["id"])
        if len(ids) != s["rows"] or not np.array_equal(ids, self.shard_ids(k)):
            raise self.damaged(rel, f"holds {len(ids)} rows that are not ids {s['first_id']}.."
                                    f"{s['first_id'] + s['rows'] - 1} of its shard")
        return table

    def metadata(self) -> pa.Table:
        """Metadata of live rows (base columns, source columns and saved tags), in id order.

        Paths that are not valid UTF-8 appear in their printable escaped form (see file_paths())."""
        if self._meta is None:
            tables = [self.read_shard_metadata(k) for k in range(len(self._shards))]
            if tables:
                table = pa.concat_tables(tables, promote_options="permissive")
            else:
                table = pa.table({c: pa.array([], t) for c, t in zip(BASE_COLUMNS, _BASE_TYPES)})
                table = _with_photo_columns(table)
            table, self._real_paths = _pop_raw_paths(table)
            if len(self._deleted):
                import pyarrow.compute as pc  # not at the top: `pixdex info` needs no compute kernels

                table = table.filter(pc.invert(pc.is_in(table["id"], pa.array(self._deleted))))
            for name, file in sorted((self.manifest.get("tags") or {}).items()):
                table = _left_join_by_id(table, self._read_tags_file(file))
            self._meta = table
        return self._meta

    def _read_table(self, rel: str) -> pa.Table:
        """A whole parquet file of the store, probed; missing or unreadable ones name the file."""
        self.probe(rel)
        try:
            return pq.read_table(self.path / rel)
        except FileNotFoundError:
            raise self.missing(rel) from None
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise self.damaged(rel, f"not a readable parquet file ({_first_line(exc)})") from None

    def _read_tags_file(self, rel: str) -> pa.Table:
        tags = self._read_table(rel)
        if "id" not in tags.column_names or tags["id"].type != pa.int64():
            raise self.damaged(rel, "has no int64 'id' column")
        return tags

    def _read_tagger_file(self, rel: str) -> dict:
        self.probe(rel)
        try:
            record = json.loads((self.path / rel).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self.missing(rel) from None
        except (OSError, ValueError) as exc:
            raise self.damaged(rel, f"not a readable JSON file ({_first_line(exc)})") from None
        if not isinstance(record, dict):
            raise self.damaged(rel, "is not a JSON object")
        return record

    def tag_table(self, name: str) -> pa.Table:
        """The stored columns of tag set `name` (id + its columns), as saved."""
        file = (self.manifest.get("tags") or {}).get(name)
        if file is None:
            raise PixdexError(f"store {self.path} has no tag set {name!r} "
                              f"(it has: {', '.join(self.tag_sets()) or 'none'})")
        return self._read_tags_file(file)

    def taggers(self) -> list[str]:
        """Tag sets saved with their classifier record (recomputable for new items)."""
        return sorted(self.manifest.get("taggers") or {})

    def tagger(self, name: str) -> dict:
        """The classifier record saved with tag set `name` (a JSON object; classify reads its fields)."""
        file = (self.manifest.get("taggers") or {}).get(name)
        if file is None:
            raise PixdexError(f"store {self.path} has no saved tagger {name!r} "
                              f"(it has: {', '.join(self.taggers()) or 'none'})")
        return self._read_tagger_file(file)

    def item(self, id: int) -> dict:
        """One item's metadata as a dict."""
        self.locate([id])
        table = self.metadata()
        import pyarrow.compute as pc

        row = table.filter(pc.equal(table["id"], int(id)))
        return {k: v[0] for k, v in row.to_pydict().items()}

    def paths(self, ids) -> list[str]:
        """Stored paths of live ids, in that order (printable: names that are not UTF-8 escaped)."""
        return self.path_array(ids).to_pylist()

    def path_array(self, ids) -> pa.Array:
        """Stored paths of live ids as an arrow array, reading only the metadata shards that hold them."""
        shard, rows = self.locate(ids)
        if not len(shard):
            return pa.nulls(0, pa.string())
        if (shard == shard[0]).all():  # one shard: the common case for a tagging block
            return take(self.shard_paths(int(shard[0])), rows)
        parts, where = [], []
        for k in sorted_unique(shard):
            sel = np.flatnonzero(shard == k)
            parts.append(take(self.shard_paths(int(k)), rows[sel]))
            where.append(sel)
        order = np.empty(len(shard), np.int64)
        order[np.concatenate(where)] = np.arange(len(shard))
        return take(pa.concat_arrays(parts), order)

    def shard_paths(self, k: int) -> pa.Array:
        """Shard k's path column, indexed by row; the last PATH_CACHE_SHARDS shards read are kept."""
        col = self._shard_paths.get(k)
        if col is None:
            try:
                table = self.read_shard_metadata(k, ["id", "path"])
            except StoreDamaged:
                # rewritten by a later writer and swept: the shard's ids and paths are unchanged
                latest = Store.open(self.path)
                if k >= len(latest._shards) or latest._shards[k]["first_id"] != self._shards[k]["first_id"]:
                    raise
                table = latest.read_shard_metadata(k, ["id", "path"])
            col = table.column("path").combine_chunks()
            if len(self._shard_paths) >= PATH_CACHE_SHARDS:
                self._shard_paths.pop(next(iter(self._shard_paths)))
            self._shard_paths[k] = col
        return col

    def ids_with_content(self, digests: Iterable[str]) -> dict[str, int]:
        """sha256 of a file's bytes -> the id of a live item stored with exactly those bytes (the lowest id
        when copies are stored), for the digests the store holds. The first call reads the id and sha256
        columns into a 16-bytes-per-item table kept with this snapshot (about 0.3 s per million items);
        later calls are a binary search plus one metadata read per candidate."""
        if self._content is None:
            self._content = self._content_table()
        prefixes, ids = self._content
        found: dict[str, int] = {}
        for digest in sorted(set(digests)):
            key = _hex_prefix(digest)
            if key is None:
                continue
            lo, hi = np.searchsorted(prefixes, key), np.searchsorted(prefixes, key, side="right")
            if hi - lo > MAX_PREFIX_CANDIDATES:  # made-up digests that share a prefix: read them all
                found.update(self._scan_content([digest]))
                continue
            for ident in ids[lo:hi].tolist():
                if self._sha256_of(ident) == digest:
                    found[digest] = ident
                    break
        return found

    def _scan_content(self, digests: list[str]) -> dict[str, int]:
        """ids_with_content by reading every shard's sha256 column (no table)."""
        found: dict[str, int] = {}
        want = set(digests)
        for k in range(len(self._shards)):
            table = self.read_shard_metadata(k, ["id", "sha256"])
            for digest, ident in zip(table["sha256"].to_pylist(), id_array(table["id"]).tolist()):
                if digest in want and digest not in found and ident not in self._deleted:
                    found[digest] = ident
        return found

    @property
    def content_table_loaded(self) -> bool:
        """Whether ids_with_content() is a cheap lookup now (its table was read in this snapshot)."""
        return self._content is not None

    def _content_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(first 8 bytes of each live item's sha256 as sorted uint64, their ids), ties by id."""
        keys, idents = [], []
        for k in range(len(self._shards)):
            table = self.read_shard_metadata(k, ["id", "sha256"])
            key, ok = _hex_prefixes(table["sha256"])
            ident = id_array(table["id"])
            keep = ok & ~np.isin(ident, self._deleted) if len(self._deleted) else ok
            keys.append(key[keep])
            idents.append(ident[keep])
        key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        ident = np.concatenate(idents) if idents else np.zeros(0, np.int64)
        order = np.lexsort((ident, key))
        return key[order], ident[order]

    def _sha256_of(self, ident: int) -> str | None:
        shard, row = self.locate([ident])
        return self.read_shard_metadata(int(shard[0]), ["sha256"])["sha256"][int(row[0])].as_py()

    def file_paths(self, ids) -> list[str]:
        """The file names of live ids as the OS takes them (names that are not UTF-8 unescaped)."""
        return [self.real_path(p) for p in self.paths(ids)]

    def real_path(self, stored: str) -> str:
        """A path as metadata() shows it -> the file name as the OS takes it."""
        self.metadata()
        return self._real_paths.get(stored, stored)

    def errors(self) -> pa.Table:
        """Files that could not be indexed: path (printable), reason (one line), bytes, mtime."""
        return _pop_raw_paths(self._error_table())[0]

    def error_records(self) -> list[dict]:
        """The error table as dicts whose path is the file name as the OS takes it."""
        table, real = _pop_raw_paths(self._error_table())
        return [{**r, "path": real.get(r["path"], r["path"])} for r in table.to_pylist()]

    def _error_table(self) -> pa.Table:
        name = self.manifest.get("errors")
        if not name:
            return ERROR_SCHEMA.empty_table()
        table = self._read_table(name)
        if any(c not in table.column_names for c in ERROR_SCHEMA.names):
            raise self.damaged(name, "is not an error table")
        return table

    def tag_sets(self) -> list[str]:
        return sorted(self.manifest.get("tags") or {})

    # ---- index ------------------------------------------------------------------------------
    def index_path(self) -> Path | None:
        name = self.index_info.get("file")
        return self.path / name if name else None

    def load_index(self):
        """The FAISS index, memory-mapped read-only: IO_FLAG_MMAP_IFC maps vectors, codes and IVF lists
        in place, so opening reads nothing up front and searches run at in-RAM speed (plain IO_FLAG_MMAP's
        mapped IVF lists measured 20-50x slower per query). Older faiss: IVF with IO_FLAG_MMAP.
        A missing, swapped or unreadable index file raises StoreDamaged."""
        path = self.index_path()
        if path is None:
            raise PixdexError(f"store {self.path} has no index yet (run pixdex index again)")
        info = self.index_info
        names = [info["file"], *(info.get("files") or [])]
        for rel in names:
            self.probe(rel)
            if not (self.path / rel).is_file():
                raise self.missing(rel)
        try:
            index = self._read_index()
        except RuntimeError as exc:
            raise self.damaged(info["file"], f"not a readable FAISS index ({_first_line(exc)})") from None
        if "ntotal" in info and int(index.ntotal) != int(info["ntotal"]):
            raise self.damaged(info["file"],
                               f"holds {index.ntotal} vectors, the manifest records {info['ntotal']}")
        if index.d != self.dim:
            raise self.damaged(info["file"], f"has dimension {index.d}, the store {self.dim}")
        return index

    def _read_index(self):
        import faiss

        path = self.index_path()
        if self.index_info.get("type", "") in SHARDED_TYPES:
            index = read_sharded(self.path, self.index_info, self.dim)
            apply_search_params(index, self.index_info.get("params") or {})
            return index
        ifc = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
        if ifc is not None:
            index = faiss.read_index(str(path), ifc | faiss.IO_FLAG_READ_ONLY)
        elif self.index_info.get("type", "").startswith("ivf"):
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        else:
            index = faiss.read_index(str(path))
        apply_search_params(index, self.index_info.get("params") or {})
        return index

    def index_is_current(self) -> bool:
        """True when the index holds exactly the live rows of this snapshot."""
        info = self.index_info
        return bool(info.get("file")) and info.get("rows") == self.manifest["counts"]["rows"] and (
            info.get("deleted") == len(self._deleted)
        )


def as_ids(ids, store: Store | None = None) -> np.ndarray:
    """ids as a 1-D int64 array; InvalidType/InvalidValue (one line) for values that cannot be ids."""
    where = f" in store {store.path}" if store is not None else ""
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as exc:
        raise InvalidType(f"unknown ids {ids!r:.60}{where}: {_first_line(exc)}") from None
    if arr.dtype.kind == "i" or (arr.dtype.kind == "u" and (not arr.size or arr.max() < 2**63)):
        return arr.astype(np.int64, copy=False).reshape(-1)
    out = []
    for v in arr.reshape(-1).tolist():
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidType(f"unknown id {describe(v)}{where}: ids are whole numbers")
        if not -(2**63) <= v < 2**63:
            raise InvalidValue(f"unknown id {describe(v)}{where}: ids are 64-bit integers")
        out.append(v)
    return np.array(out, np.int64)


def _read_manifest_bytes(path: Path) -> bytes:
    try:
        return (path / MANIFEST).read_bytes()
    except OSError as exc:
        raise StoreDamaged(path / MANIFEST, exc.strerror or _first_line(exc), path) from None


def parse_manifest(path: Path, text: bytes) -> dict:
    """The manifest's JSON, checked (StoreDamaged naming manifest.json when it is empty, cut or garbled)."""
    if not text.strip():
        raise StoreDamaged(path / MANIFEST, "empty file", path)
    try:
        m = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreDamaged(path / MANIFEST, f"not valid JSON (truncated or garbled: {_first_line(exc)})",
                           path) from None
    check_manifest(path, m)
    return m


_BASE_TYPES = [pa.int64(), pa.string(), pa.int64(), pa.float64(), pa.int32(), pa.int32(), pa.string()]


def _left_join_by_id(table: pa.Table, tags: pa.Table) -> pa.Table:
    """Add tag columns to table by id (missing ids get nulls), keeping table's order."""
    tag_ids = tags["id"].to_numpy()
    pos = {int(i): k for k, i in enumerate(tag_ids)}
    rows = pa.array([pos.get(int(i)) for i in table["id"].to_numpy()], pa.int64())
    for name in tags.column_names:
        if name == "id":
            continue
        col = tags[name].take(rows)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table


class StoreWriter:
    """Appends to a store under an exclusive lock; commit() makes everything written so far durable.

    A killed writer leaves only files the manifest does not name; they are swept on the next open.
    """

    def __init__(self, path: str | os.PathLike, model: ModelInfo | None = None, shard_rows: int = 4096):
        self.path = Path(path).expanduser()
        if shard_rows < 1:
            raise PixdexError(f"shard size must be at least 1 row (got {shard_rows})")
        self.shard_rows = shard_rows
        self._migrate_model = False  # an older store's model record is rewritten at the next commit
        if not is_store(self.path):
            _check_new_store_dir(self.path, model)
        self._lock = lock_store(self.path)
        try:
            self._open_manifest(model)
        except BaseException:
            self._lock.close()
            raise
        try:
            self.snapshot().check_probes()
        except BaseException:
            self._lock.close()
            raise
        self._opened_files = self._referenced()
        self._sweep()
        self._pending_rows: list[dict] = []
        self._pending_emb: list[np.ndarray] = []
        self._deleted = set(self.snapshot().deleted_ids.tolist())
        self._errors: dict[str, dict] = {r["path"]: r for r in self.snapshot().error_records()}
        self._errors_dirty = False
        self._mtimes: dict[int, float] = {}
        self._columns: dict[int, dict] = {}  # id -> metadata values to set (columns added to old shards)
        self._dirty = False
        if model is not None and self._migrate_model:
            # an older store's fingerprint changed with the folder and dtype: record the one that does not
            self.manifest["model"] = model.record()
            self._dirty = True
        # vectors(): a snapshot of the current generation, shards mapped once
        self._reader: Store | None = None

    def _open_manifest(self, model: ModelInfo | None) -> None:
        """Read the committed manifest, or commit an empty one so a killed first run leaves a valid store."""
        if is_store(self.path):
            self.manifest = Store.open(self.path).manifest
            if model is not None and self.manifest["next_id"] == 0 and not self.manifest["shards"]:
                if model.record() != self.manifest["model"]:  # nothing embedded yet: any model may start it
                    self.manifest = new_manifest(model)
                    self._save_manifest()
            elif model is not None:
                Store(self.path, self.manifest).check_model(model)
                self._migrate_model = self.manifest["model"]["fingerprint"] != model.fingerprint
        else:
            if model is None:
                raise PixdexError(f"store {self.path} does not exist")
            self.manifest = new_manifest(model)
            self._save_manifest()

    def _save_manifest(self) -> None:
        save_json(self.path / MANIFEST, self.manifest)

    def snapshot(self) -> Store:
        """A reader over what is committed now (unaffected by later writes)."""
        return Store(self.path, copy.deepcopy(self.manifest))

    # ---- writes -----------------------------------------------------------------------------
    def append(self, rows: list[dict], embeddings: np.ndarray) -> list[int]:
        """Queue rows (metadata dicts without id) with their embeddings; returns their new ids.

        Rows are committed (a new shard) once shard_rows are pending, or at commit()/close().
        """
        if len(rows) != len(embeddings):
            raise ValueError("rows and embeddings differ in length")
        embeddings = np.asarray(embeddings, np.float16).reshape(len(rows), -1)
        if len(rows) and embeddings.shape[1] != self.manifest["dim"]:
            raise PixdexError(f"embeddings have dim {embeddings.shape[1]}, "
                              f"store {self.path} has {self.manifest['dim']}")
        start = self.manifest["next_id"] + len(self._pending_rows)
        ids = list(range(start, start + len(rows)))
        for i, row in zip(ids, rows):
            row["id"] = i
            self.forget_errors([row["path"]])
        self._pending_rows.extend(rows)
        self._pending_emb.append(embeddings)
        if len(self._pending_rows) >= self.shard_rows:
            self.commit()
        return ids

    def vectors(self, ids) -> np.ndarray:
        """float32 embeddings of rows committed before or appended by this writer (pending ones too)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros((len(ids), self.manifest["dim"]), np.float32)
        first_pending = self.manifest["next_id"]
        committed = ids < first_pending
        if committed.any():
            if self._reader is None or self._reader.manifest["generation"] != self.manifest["generation"]:
                self._reader = self.snapshot()
            out[committed] = self._reader.vectors(ids[committed])
        if (~committed).any():
            pending = np.concatenate(self._pending_emb)
            rel = ids[~committed] - first_pending
            if rel.max() >= len(pending):
                raise PixdexError(f"unknown id {int(ids[~committed][rel.argmax()])} in store {self.path}")
            out[~committed] = pending[rel]
        return out

    def delete(self, ids) -> None:
        """Mark stored rows as removed (from the next commit on)."""
        new = {int(i) for i in ids} - self._deleted
        if new:
            self._deleted |= new
            self._dirty = True

    def set_mtime(self, id: int, mtime: float) -> None:
        """Record a file's new mtime for an unchanged row (touched file, same content), keeping its id."""
        self._mtimes[int(id)] = float(mtime)
        self._dirty = True

    def set_columns(self, id: int, values: dict) -> None:
        """Set metadata values of a stored row in place (e.g. photo columns an older store lacks)."""
        self._columns.setdefault(int(id), {}).update(values)
        self._dirty = True

    def shards_lacking(self, columns) -> list[int]:
        """Numbers of committed shards whose metadata file has not all of `columns`."""
        want = set(columns)
        return [k for k, s in enumerate(self.manifest["shards"])
                if not want <= set(pq.read_schema(self.path / s["metadata"]).names)]

    def record_error(self, path: str, reason: str, size: int | None, mtime: float | None) -> None:
        """Put a file in the error table with a one-line reason (replacing an earlier entry)."""
        reason = " ".join(str(reason).split()) or "unknown error"
        size = None if size is None or size < 0 else int(size)
        mtime = None if mtime is None or mtime < 0 else float(mtime)
        self._errors[path] = {"path": path, "reason": reason, "bytes": size, "mtime": mtime}
        self._errors_dirty = self._dirty = True

    def forget_errors(self, paths) -> None:
        """Drop error-table entries (the file was indexed or is gone)."""
        for p in paths:
            if self._errors.pop(p, None) is not None:
                self._errors_dirty = self._dirty = True

    def error_paths(self) -> list[str]:
        return list(self._errors)

    def write_tags(self, name: str, table: pa.Table) -> None:
        """Store tag columns (an `id` column plus others) as the named tag set, replacing it."""
        if "id" not in table.column_names:
            raise PixdexError("tag table needs an 'id' column")
        if not TAG_SET_NAME.match(name or ""):
            raise PixdexError(f"tag set name {name!r} may only use letters, digits, '_', '-' and '.'")
        gen = self.manifest["generation"] + 1
        try:
            (self.path / "tags").mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(f"cannot write {self.path / 'tags'}: {exc.strerror}", exc.errno) from None
        rel = self._fresh(tags_file(name, gen))
        save_parquet(self.path / rel, table)
        self.manifest.setdefault("tags", {})[name] = rel
        self._dirty = True

    def write_tagger(self, name: str, record: dict) -> None:
        """Store the classifier record (JSON-able) of tag set `name`, replacing an earlier one."""
        if name not in (self.manifest.get("tags") or {}):
            raise PixdexError(f"tagger {name!r} needs its tag set: write_tags first")
        gen = self.manifest["generation"] + 1
        rel = self._fresh(tagger_file(name, gen))
        save_json(self.path / rel, record)
        self.manifest.setdefault("taggers", {})[name] = rel
        self._dirty = True

    def set_index(self, record: IndexRecord | dict) -> None:
        """Record a freshly written index (its file already on disk)."""
        record = record if isinstance(record, IndexRecord) else IndexRecord.from_dict(record)
        self.manifest["index"] = record.to_dict()
        self._dirty = True

    def commit(self) -> None:
        """Write the pending shard and the changed tables, then the manifest (last, atomically)."""
        m = self.manifest
        gen = m["generation"] + 1
        if self._pending_rows:
            emb = np.concatenate(self._pending_emb)
            number = self._new_shard_number()
            emb_rel, meta_rel = embeddings_file(number), metadata_file(number)
            save_npy(self.path / emb_rel, emb)
            save_parquet(self.path / meta_rel, rows_to_table(self._pending_rows, self.manifest))
            m["shards"].append({"embeddings": emb_rel, "metadata": meta_rel, "first_id": m["next_id"],
                                "rows": len(emb), "dtype": "float16", "dim": int(emb.shape[1])})
            m["next_id"] += len(emb)
            m["next_shard"] = number + 1
            self._pending_rows, self._pending_emb = [], []
            self._dirty = True
        if not self._dirty:
            return
        if self._mtimes:
            self._write_mtimes(gen)
        if self._columns:
            self._write_columns(gen)
        if len(self._deleted) != m["counts"].get("deleted", 0):
            rel = self._fresh(deleted_file(gen))
            save_npy(self.path / rel, np.array(sorted(self._deleted), dtype=np.int64))
            m["deleted"] = rel
        if self._errors_dirty:
            if self._errors:
                rel = self._fresh(errors_file(gen))
                rows = sorted(self._errors.values(), key=lambda r: r["path"])
                table = pa.Table.from_pylist([{**r, "path": ""} for r in rows], schema=ERROR_SCHEMA)
                save_parquet(self.path / rel, _with_raw_paths(table, [r["path"] for r in rows]))
                m["errors"] = rel
            else:
                m.pop("errors", None)
            self._errors_dirty = False
        rows = sum(s["rows"] for s in m["shards"])
        m["counts"] = {"rows": rows, "items": rows - len(self._deleted), "deleted": len(self._deleted),
                       "errors": len(self._errors)}
        m["generation"] = gen
        m["updated"] = now_iso()
        self._record_files()
        self._save_manifest()
        self._dirty = False

    def _new_shard_number(self) -> int:
        """The next shard number: past the manifest's counter and past every shard file on disk."""
        n = max(int(self.manifest.get("next_shard", len(self.manifest["shards"]))),
                len(self.manifest["shards"]))
        for p in (self.path / "shards").iterdir():
            match = SHARD_FILE.match(p.name)
            if match:
                n = max(n, int(match.group(2)) + 1)
        return n

    def _fresh(self, rel: str) -> str:
        """A generation-numbered name, refused if the committed manifest still names that file."""
        if rel in self._referenced():
            raise StoreDamaged(self.path / MANIFEST,
                               f"its generation {self.manifest['generation']} is behind "
                               f"the files it names ({rel})", self.path)
        return rel

    def _record_files(self) -> None:
        """Record bytes, sha256 and probe of every named file not yet recorded; forget the others.

        Files of stores written before checksums existed are recorded at their first write."""
        files = self.manifest.setdefault("files", {})
        names = self._referenced() - {MANIFEST}
        for rel in sorted(names - set(files)):
            files[rel] = file_digest(self.path / rel)
        for rel in set(files) - names:
            del files[rel]

    def _write_mtimes(self, gen: int) -> None:
        """Rewrite the metadata files of shards holding rows with refreshed mtimes (embeddings untouched)."""
        snap = self.snapshot()
        ids = np.array(sorted(self._mtimes), np.int64)
        for k in np.unique(np.searchsorted(snap._first_ids, ids, side="right") - 1):
            shard = self.manifest["shards"][int(k)]
            table = snap.read_shard_metadata(int(k))
            mtimes = [self._mtimes.get(i, t)
                      for i, t in zip(table["id"].to_pylist(), table["mtime"].to_pylist())]
            table = table.set_column(table.column_names.index("mtime"), "mtime",
                                     pa.array(mtimes, pa.float64()))
            rel = self._fresh(metadata_file(shard_number(shard["embeddings"]), gen))
            save_parquet(self.path / rel, table)
            shard["metadata"] = rel
        self._mtimes = {}

    def _write_columns(self, gen: int) -> None:
        """Rewrite the metadata files of shards holding rows with new column values (embeddings untouched)."""
        snap = self.snapshot()
        ids = np.array(sorted(self._columns), np.int64)
        for k in np.unique(np.searchsorted(snap._first_ids, ids, side="right") - 1):
            shard = self.manifest["shards"][int(k)]
            table = snap.read_shard_metadata(int(k))
            updates = [self._columns.get(i, {}) for i in table["id"].to_pylist()]
            types = dict(zip(PHOTO_SCHEMA.names, PHOTO_SCHEMA.types))
            for name in sorted({c for u in updates for c in u}):
                there = name in table.column_names
                old = table[name].to_pylist() if there else [None] * table.num_rows
                col = pa.array([u.get(name, o) for u, o in zip(updates, old)], types.get(name))
                table = (table.set_column(table.column_names.index(name), name, col) if there
                         else table.append_column(name, col))
            rel = metadata_file(shard_number(shard["embeddings"]), gen)
            # the same commit may rewrite it twice
            rel = rel if rel == shard["metadata"] else self._fresh(rel)
            save_parquet(self.path / rel, table)
            shard["metadata"] = rel
        self._columns = {}

    def close(self) -> None:
        """Commit, then sweep files that neither this manifest nor the previous session's one names."""
        try:
            self.commit()
            gone = sorted(self._opened_files - self._referenced())
            if gone:  # readers of the snapshot this session started from may still use these
                self.manifest["retained"] = gone
                self._dirty = True
                self.commit()
            self._sweep()
        finally:
            self._lock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was committed; the half-made shard is swept by the next writer
            self._lock.close()

    # ---- housekeeping -----------------------------------------------------------------------
    def _referenced(self) -> set[str]:
        return referenced_files(self.manifest) | {MANIFEST}

    def _sweep(self) -> None:
        """Delete writer-owned files that no manifest names (left by a killed job or replaced long ago)."""
        keep = self._referenced() | set(self.manifest.get("retained") or [])
        named = {SHARD_FILE.match(Path(s["embeddings"]).name).group(2) for s in self.manifest["shards"]}
        next_shard = int(self.manifest.get("next_shard", len(self.manifest["shards"])))
        for p in (list(self.path.glob("*")) + list(self.path.glob("shards/*"))
                  + list(self.path.glob("tags/*"))):
            rel = p.relative_to(self.path).as_posix()
            if not p.is_file() or rel in keep or not OWNED.match(rel):
                continue
            shard = SHARD_FILE.match(p.name) if rel.startswith("shards/") else None
            if shard and shard.group(2) not in named and int(shard.group(2)) < next_shard:
                continue  # a committed shard the manifest no longer names: kept for `pixdex repair`
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only or busy file stays; the next writer tries again


def lock_store(path: Path):
    """Create the store folder if needed and take its writer lock (an open file; closing it unlocks)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "shards").mkdir(exist_ok=True)
        lock = open(path / ".lock", "a")  # held open: the flock lives as long as it
    except OSError as exc:
        raise StoreWriteError(f"store {path} cannot be written: {exc.strerror or _first_line(exc)}",
                              exc.errno) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise PixdexError(f"store {path} is being written by another process") from None
    return lock


def _check_new_store_dir(path: Path, model: ModelInfo | None) -> None:
    """Refuse to turn a file or a folder with other content into a store (before creating anything)."""
    if model is None:
        raise PixdexError(f"store {path} does not exist")
    if path.exists() and not path.is_dir():
        raise PixdexError(f"{path} is a file, not a store directory; choose a new directory with --out")
    if path.is_dir():
        other = [p.name for p in path.iterdir()
                 if p.name not in (".lock", "shards") and not p.name.startswith(".tmp-")]
        if other:
            raise PixdexError(f"{path} exists and is not a pixdex store (it holds {other[0]!r}, ...); "
                              f"choose a new or empty directory with --out")


def new_manifest(model: ModelInfo) -> dict:
    t = now_iso()
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.record(),
        "dim": model.dim,
        "dtype": "float16",
        "metric": "inner_product",
        "normalized": True,
        "shards": [],
        "next_id": 0,
        "next_shard": 0,
        "files": {},
        "generation": 0,
        "counts": {"rows": 0, "items": 0, "deleted": 0, "errors": 0},
        "index": {},
        "tags": {},
        "created": t,
        "updated": t,
    }


def rows_to_table(rows: list[dict], manifest: dict | None = None) -> pa.Table:
    """Metadata rows as a table with the base columns first and typed (path_raw for names that are not
    UTF-8; the model record in the file's metadata when `manifest` is given)."""
    paths = [r["path"] for r in rows]
    table = pa.Table.from_pylist([{**r, "path": ""} for r in rows])
    cols = [c for c in BASE_COLUMNS if c in table.column_names] + [
        c for c in table.column_names if c not in BASE_COLUMNS
    ]
    table = _with_raw_paths(table.select(cols), paths)
    for name, typ in [*zip(BASE_COLUMNS, _BASE_TYPES), *zip(PHOTO_SCHEMA.names, PHOTO_SCHEMA.types)]:
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, table[name].cast(typ))
    if manifest is not None:
        record = json.dumps({"model": manifest["model"], "dim": manifest["dim"]}, sort_keys=True)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), MODEL_KEY: record.encode()})
    return table


def _with_photo_columns(table: pa.Table) -> pa.Table:
    """An (empty) table with the photo columns added, so filters on them parse on an empty store."""
    for f in PHOTO_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.array([None] * table.num_rows, f.type))
    return table
