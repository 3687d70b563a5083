"""The collection store: a directory that search and classify open later.

Layout (every file immutable once named in the manifest; the manifest is written last):
    manifest.json                  the committed state: model, counts, shard list, current files
    shards/emb-NNNNNN.npy          float16 [rows, dim], L2-normalised, memory-mappable, append-only
    shards/meta-NNNNNN.parquet     id, path, bytes, mtime, width, height, sha256, source columns
                                   (rewritten as meta-NNNNNN-gGGGGGG.parquet when mtimes are refreshed)
    deleted-GGGGGG.npy             ids of removed rows (sorted int64)
    errors-GGGGGG.parquet          files that could not be indexed: path, reason, bytes, mtime
    tags/NAME-GGGGGG.parquet       tag columns written by classify --save-as (id + columns)
    index-GGGGGG.faiss             the FAISS index over live rows, FAISS ids = store ids
Ids are assigned in order and never reused, so shard k holds the contiguous id range
[first_id, first_id + rows). Files replaced by a writer session stay on disk until the end of the
next one (manifest "retained"), so a reader that opened an older snapshot keeps working meanwhile.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.atomic import save_json, save_npy, save_parquet
from indexer.errors import ModelMismatchError, PixdexError
from indexer.exif import PHOTO_SCHEMA
from indexer.faiss_index import SHARDED_TYPES, apply_search_params, read_sharded

if TYPE_CHECKING:  # the encoder pulls in torch; reading a store does not need it
    from indexer.models import ModelInfo

FORMAT = "pixdex-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ERROR_SCHEMA = pa.schema(
    [("path", pa.string()), ("reason", pa.string()), ("bytes", pa.int64()), ("mtime", pa.float64())]
)
BASE_COLUMNS = ["id", "path", "bytes", "mtime", "width", "height", "sha256"]
# Files a writer owns (and may sweep when no manifest names them); anything else in the folder is left alone.
OWNED = re.compile(r"^(\.tmp-.*|index-\d+(-part-\d+)?\.(faiss|ivfdata)|deleted-\d+\.npy|errors-\d+\.parquet|"
                   r"shards/.*|tags/.*)$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_store(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


class Store:
    """A read-only snapshot of a store: what the manifest said when it was opened."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self._shards = manifest["shards"]
        self._first_ids = np.array([s["first_id"] for s in self._shards], dtype=np.int64)
        self._emb_cache: dict[int, np.ndarray] = {}
        self._meta: pa.Table | None = None
        self._path_of: dict[int, str] | None = None
        self._deleted = self._load_deleted()

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        """Open the last committed state of the store at `path` (a local path, file:// or any fsspec URL)."""
        from indexer.remote_store import open_path

        path = open_path(path)
        mf = path / MANIFEST
        if not mf.is_file():
            what = "does not exist" if not path.exists() else "is not a pixdex store (no manifest.json)"
            raise PixdexError(f"store {path} {what}")
        manifest = json.loads(mf.read_text())
        if manifest.get("format") != FORMAT or manifest.get("version", 0) > FORMAT_VERSION:
            raise PixdexError(f"store {path} has an unsupported format/version {manifest.get('version')}")
        return cls(path, manifest)

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
        if info.fingerprint != mine["fingerprint"] or info.dim != self.dim:
            raise ModelMismatchError(
                f"store {self.path} was built with model '{mine['name']}' (fingerprint {mine['fingerprint']}, "
                f"dim {self.dim}); '{info.name}' (fingerprint {info.fingerprint}, dim {info.dim}) cannot be used "
                f"with it. Use --model {mine['name']} or index into a new store."
            )

    # ---- embeddings -------------------------------------------------------------------------
    def _load_deleted(self) -> np.ndarray:
        name = self.manifest.get("deleted")
        if not name:
            return np.zeros(0, np.int64)
        return np.load(self.path / name)

    def shard_embeddings(self, k: int) -> np.ndarray:
        """Shard k's float16 embeddings, memory-mapped (rows include removed ones)."""
        if k not in self._emb_cache:
            self._emb_cache[k] = np.load(self.path / self._shards[k]["embeddings"], mmap_mode="r")
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
            emb = emb if emb is not None else np.load(self.path / s["embeddings"], mmap_mode="r")
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

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, row in shard) for each id; PixdexError for ids not stored or removed."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
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
        for k in np.unique(shard):
            sel = shard == k
            if cache:
                out[sel] = self.shard_embeddings(int(k))[rows[sel]]
            else:
                emb = np.load(self.path / self._shards[int(k)]["embeddings"], mmap_mode="r")
                out[sel] = emb[rows[sel]]
                del emb
        return out

    # ---- metadata ---------------------------------------------------------------------------
    def metadata(self) -> pa.Table:
        """Metadata of live rows (base columns, source columns and saved tags), in id order."""
        if self._meta is None:
            tables = [pq.read_table(self.path / s["metadata"]) for s in self._shards]
            if tables:
                table = pa.concat_tables(tables, promote_options="permissive")
            else:
                table = pa.table({c: pa.array([], t) for c, t in zip(BASE_COLUMNS, _BASE_TYPES)})
                table = _with_photo_columns(table)
            if len(self._deleted):
                table = table.filter(pc.invert(pc.is_in(table["id"], pa.array(self._deleted))))
            for name, file in sorted((self.manifest.get("tags") or {}).items()):
                tags = pq.read_table(self.path / file)
                table = _left_join_by_id(table, tags)
            self._meta = table
        return self._meta

    def item(self, id: int) -> dict:
        """One item's metadata as a dict."""
        self.locate([id])
        table = self.metadata()
        row = table.filter(pc.equal(table["id"], int(id)))
        return {k: v[0] for k, v in row.to_pydict().items()}

    def paths(self, ids) -> list[str]:
        """Stored paths of live ids, in that order."""
        if self._path_of is None:
            table = self.metadata()
            self._path_of = dict(zip(table["id"].to_pylist(), table["path"].to_pylist()))
        return [self._path_of[int(i)] for i in ids]

    def errors(self) -> pa.Table:
        """Files that could not be indexed: path, reason (one line), bytes, mtime."""
        name = self.manifest.get("errors")
        return pq.read_table(self.path / name) if name else ERROR_SCHEMA.empty_table()

    def tag_sets(self) -> list[str]:
        return sorted(self.manifest.get("tags") or {})

    # ---- index ------------------------------------------------------------------------------
    def index_path(self) -> Path | None:
        name = self.index_info.get("file")
        return self.path / name if name else None

    def load_index(self):
        """The FAISS index, memory-mapped read-only: IO_FLAG_MMAP_IFC maps vectors, codes and IVF lists
        in place, so opening reads nothing up front and searches run at in-RAM speed (plain IO_FLAG_MMAP's
        mapped IVF lists measured 20-50x slower per query). Older faiss: IVF with IO_FLAG_MMAP."""
        import faiss

        path = self.index_path()
        if path is None:
            raise PixdexError(f"store {self.path} has no index yet (run pixdex index again)")
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


_BASE_TYPES = [pa.int64(), pa.string(), pa.int64(), pa.float64(), pa.int32(), pa.int32(), pa.string()]


def _left_join_by_id(table: pa.Table, tags: pa.Table) -> pa.Table:
    """Add tag columns to table by id (missing ids get nulls), keeping table's order."""
    tag_ids = tags["id"].to_numpy()
    pos = {int(i): k for k, i in enumerate(tag_ids)}
    take = pa.array([pos.get(int(i)) for i in table["id"].to_numpy()], pa.int64())
    for name in tags.column_names:
        if name == "id":
            continue
        col = tags[name].take(take)
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
        if not is_store(self.path):
            _check_new_store_dir(self.path, model)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "shards").mkdir(exist_ok=True)
        self._lock = open(self.path / ".lock", "a")  # noqa: SIM115 - held open: the flock lives as long as it
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise PixdexError(f"store {self.path} is being written by another process") from None
        try:
            self._open_manifest(model)
        except BaseException:
            self._lock.close()
            raise
        self._opened_files = self._referenced()
        self._sweep()
        self._pending_rows: list[dict] = []
        self._pending_emb: list[np.ndarray] = []
        self._deleted = set(self.snapshot().deleted_ids.tolist())
        self._errors: dict[str, dict] = {r["path"]: r for r in self.snapshot().errors().to_pylist()}
        self._errors_dirty = False
        self._mtimes: dict[int, float] = {}
        self._columns: dict[int, dict] = {}  # id -> metadata values to set (columns added to old shards)
        self._dirty = False
        self._reader: Store | None = None  # vectors(): a snapshot of the current generation, shards mapped once

    def _open_manifest(self, model: ModelInfo | None) -> None:
        """Read the committed manifest, or commit an empty one so a killed first run leaves a valid store."""
        if is_store(self.path):
            self.manifest = Store.open(self.path).manifest
            if model is not None and self.manifest["next_id"] == 0 and not self.manifest["shards"]:
                if asdict(model) != self.manifest["model"]:  # nothing embedded yet: any model may start it
                    self.manifest = new_manifest(model)
                    save_json(self.path / MANIFEST, self.manifest)
            elif model is not None:
                Store(self.path, self.manifest).check_model(model)
        else:
            if model is None:
                raise PixdexError(f"store {self.path} does not exist")
            self.manifest = new_manifest(model)
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
            raise PixdexError(f"embeddings have dim {embeddings.shape[1]}, store {self.path} has {self.manifest['dim']}")
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
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
            raise PixdexError(f"tag set name {name!r} may only use letters, digits, '_', '-' and '.'")
        gen = self.manifest["generation"] + 1
        (self.path / "tags").mkdir(exist_ok=True)
        rel = f"tags/{name}-{gen:06d}.parquet"
        save_parquet(self.path / rel, table)
        self.manifest.setdefault("tags", {})[name] = rel
        self._dirty = True

    def set_index(self, info: dict) -> None:
        """Record a freshly written index (info["file"] already on disk)."""
        self.manifest["index"] = info
        self._dirty = True

    def commit(self) -> None:
        """Write the pending shard and the changed tables, then the manifest (last, atomically)."""
        m = self.manifest
        gen = m["generation"] + 1
        if self._pending_rows:
            emb = np.concatenate(self._pending_emb)
            name = f"{len(m['shards']):06d}"
            emb_rel, meta_rel = f"shards/emb-{name}.npy", f"shards/meta-{name}.parquet"
            save_npy(self.path / emb_rel, emb)
            save_parquet(self.path / meta_rel, rows_to_table(self._pending_rows))
            m["shards"].append(
                {"embeddings": emb_rel, "metadata": meta_rel, "first_id": m["next_id"], "rows": len(emb)}
            )
            m["next_id"] += len(emb)
            self._pending_rows, self._pending_emb = [], []
            self._dirty = True
        if not self._dirty:
            return
        if self._mtimes:
            self._write_mtimes(gen)
        if self._columns:
            self._write_columns(gen)
        if len(self._deleted) != m["counts"].get("deleted", 0):
            m["deleted"] = f"deleted-{gen:06d}.npy"
            save_npy(self.path / m["deleted"], np.array(sorted(self._deleted), dtype=np.int64))
        if self._errors_dirty:
            if self._errors:
                m["errors"] = f"errors-{gen:06d}.parquet"
                rows = sorted(self._errors.values(), key=lambda r: r["path"])
                save_parquet(self.path / m["errors"], pa.Table.from_pylist(rows, schema=ERROR_SCHEMA))
            else:
                m.pop("errors", None)
            self._errors_dirty = False
        rows = sum(s["rows"] for s in m["shards"])
        m["counts"] = {"rows": rows, "items": rows - len(self._deleted), "deleted": len(self._deleted),
                       "errors": len(self._errors)}
        m["generation"] = gen
        m["updated"] = now_iso()
        save_json(self.path / MANIFEST, m)
        self._dirty = False

    def _write_mtimes(self, gen: int) -> None:
        """Rewrite the metadata files of shards holding rows with refreshed mtimes (embeddings untouched)."""
        first = np.array([s["first_id"] for s in self.manifest["shards"]], np.int64)
        ids = np.array(sorted(self._mtimes), np.int64)
        for k in np.unique(np.searchsorted(first, ids, side="right") - 1):
            shard = self.manifest["shards"][int(k)]
            table = pq.read_table(self.path / shard["metadata"])
            mtimes = [self._mtimes.get(i, t) for i, t in zip(table["id"].to_pylist(), table["mtime"].to_pylist())]
            table = table.set_column(table.column_names.index("mtime"), "mtime", pa.array(mtimes, pa.float64()))
            rel = f"shards/meta-{int(k):06d}-g{gen:06d}.parquet"
            save_parquet(self.path / rel, table)
            shard["metadata"] = rel
        self._mtimes = {}

    def _write_columns(self, gen: int) -> None:
        """Rewrite the metadata files of shards holding rows with new column values (embeddings untouched)."""
        first = np.array([s["first_id"] for s in self.manifest["shards"]], np.int64)
        ids = np.array(sorted(self._columns), np.int64)
        for k in np.unique(np.searchsorted(first, ids, side="right") - 1):
            shard = self.manifest["shards"][int(k)]
            table = pq.read_table(self.path / shard["metadata"])
            updates = [self._columns.get(i, {}) for i in table["id"].to_pylist()]
            types = dict(zip(PHOTO_SCHEMA.names, PHOTO_SCHEMA.types))
            for name in sorted({c for u in updates for c in u}):
                there = name in table.column_names
                old = table[name].to_pylist() if there else [None] * table.num_rows
                col = pa.array([u.get(name, o) for u, o in zip(updates, old)], types.get(name))
                table = (table.set_column(table.column_names.index(name), name, col) if there
                         else table.append_column(name, col))
            rel = f"shards/meta-{int(k):06d}-g{gen:06d}.parquet"
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
        m = self.manifest
        names = {MANIFEST}
        for s in m["shards"]:
            names.update([s["embeddings"], s["metadata"]])
        for key in ("deleted", "errors"):
            if m.get(key):
                names.add(m[key])
        if (m.get("index") or {}).get("file"):
            names.add(m["index"]["file"])
            names.update(m["index"].get("files") or [])  # sharded indexes: parts or the .ivfdata file
        names.update((m.get("tags") or {}).values())
        return names

    def _sweep(self) -> None:
        """Delete writer-owned files that no manifest names (left by a killed job or replaced long ago)."""
        keep = self._referenced() | set(self.manifest.get("retained") or [])
        for p in list(self.path.glob("*")) + list(self.path.glob("shards/*")) + list(self.path.glob("tags/*")):
            rel = p.relative_to(self.path).as_posix()
            if p.is_file() and rel not in keep and OWNED.match(rel):
                p.unlink(missing_ok=True)


def _check_new_store_dir(path: Path, model: ModelInfo | None) -> None:
    """Refuse to turn a file or a folder with other content into a store (before creating anything)."""
    if model is None:
        raise PixdexError(f"store {path} does not exist")
    if path.exists() and not path.is_dir():
        raise PixdexError(f"{path} is a file, not a store directory; choose a new directory with --out")
    if path.is_dir():
        other = [p.name for p in path.iterdir() if p.name not in (".lock", "shards") and not p.name.startswith(".tmp-")]
        if other:
            raise PixdexError(f"{path} exists and is not a pixdex store (it holds {other[0]!r}, ...); "
                              f"choose a new or empty directory with --out")


def new_manifest(model: ModelInfo) -> dict:
    t = now_iso()
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": asdict(model),
        "dim": model.dim,
        "dtype": "float16",
        "metric": "inner_product",
        "normalized": True,
        "shards": [],
        "next_id": 0,
        "generation": 0,
        "counts": {"rows": 0, "items": 0, "deleted": 0, "errors": 0},
        "index": {},
        "tags": {},
        "created": t,
        "updated": t,
    }


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Metadata rows as a table with the base columns first and typed."""
    table = pa.Table.from_pylist(rows)
    cols = [c for c in BASE_COLUMNS if c in table.column_names] + [
        c for c in table.column_names if c not in BASE_COLUMNS
    ]
    table = table.select(cols)
    for name, typ in [*zip(BASE_COLUMNS, _BASE_TYPES), *zip(PHOTO_SCHEMA.names, PHOTO_SCHEMA.types)]:
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, table[name].cast(typ))
    return table


def _with_photo_columns(table: pa.Table) -> pa.Table:
    """An (empty) table with the photo columns added, so filters on them parse on an empty store."""
    for f in PHOTO_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.array([None] * table.num_rows, f.type))
    return table

