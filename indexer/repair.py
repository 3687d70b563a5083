"""`pixdex repair`: rebuild what can be rebuilt of a damaged store from what is intact, and say what it did.

Shards come from the manifest when it is readable, else from the files on disk (the model record is
kept in every metadata parquet file). Each shard is checked (embedding shape and dtype, metadata ids,
recorded sha256). A shard whose embeddings are lost but whose metadata is intact is re-embedded from
its files (only files whose content still has the stored sha256); a shard whose metadata is lost is
dropped: its ids become a gap and the next `pixdex index` embeds those files again. Unreadable tag
sets, error tables and removed-row lists are replaced by the latest readable one on disk, or dropped;
the FAISS index is rebuilt from the embeddings. Damaged files are moved to damaged/, never deleted.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.atomic import save_json, save_npy, sha256_file
from indexer.errors import PixdexError, StoreDamaged
from indexer.remote_store import is_remote_store
from indexer.store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_KEY,
    Store,
    StoreWriter,
    check_manifest,
    lock_store,
    now_iso,
    parse_manifest,
)
from indexer.store_format import deleted_file, embeddings_file, metadata_files_of, shard_number

GEN_FILE = re.compile(r"^(deleted|errors)-(\d+)\.(npy|parquet)$")
TAG_FILE = re.compile(r"^([A-Za-z0-9_.-]+)-(\d+)\.parquet$")


@dataclass
class RepairReport:
    """What `pixdex repair` found and did."""

    store: str
    problems: list[str] = field(default_factory=list)  # what was damaged
    actions: list[str] = field(default_factory=list)  # what was done about it
    dropped_rows: int = 0  # rows whose shard could not be rebuilt (their files are embedded again by `index`)
    reembedded: int = 0
    count: int = 0
    # damaged files moved to damaged/ once the manifest is written
    moved: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.problems and not self.actions:
            return f"store {self.store} is healthy: nothing to repair ({self.count} items)"
        return (f"repaired {self.store}: {len(self.problems)} problems, {self.reembedded} rows re-embedded, "
                f"{self.dropped_rows} rows dropped; store has {self.count} items")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Shard:
    number: int
    embeddings: str | None  # relative names, None when the file is missing
    metadata: str | None
    first_id: int = -1
    rows: int = 0
    emb_ok: bool = False
    meta_table: pa.Table | None = None


def repair_store(store: str | os.PathLike, model=None, device: str = "auto", progress: bool = True,
                 log: Callable[[str], None] | None = None) -> RepairReport:
    """Check every file of `store` and rebuild what is damaged (see the module docstring)."""
    log = log or (lambda m: print(m, file=sys.stderr))
    if is_remote_store(store):
        raise PixdexError(f"repair works on local stores; repair the working copy of {store} instead")
    path = Path(store).expanduser()
    if not (path / MANIFEST).exists() and not (path / "shards").is_dir():
        raise PixdexError(f"store {path} does not exist or is not a pixdex store")
    report = RepairReport(str(path))
    lock = lock_store(path)
    try:
        old, why = _read_manifest(path)
        if old is not None and why is None:
            try:
                problems = Store(path, old).verify(full=True)
            except StoreDamaged as exc:  # the removed-row list did not load
                problems = [exc]
            if not problems:
                lock.close()
                lock = None
                return _finish_healthy(path, report)
            report.problems += [f"{p.path}: {p.reason}" for p in problems]
        else:
            report.problems.append(why)
        manifest = _rebuild(path, old, model, device, progress, report, log)
        save_json(path / MANIFEST, manifest)
        report.actions.append(f"wrote a new manifest (generation {manifest['generation']})")
        for rel in report.moved:  # only now: until the new manifest is written the old one may name them
            _quarantine(path, rel, report)
    finally:
        if lock is not None:
            lock.close()
    _reindex(path, report, log)
    for line in report.problems:
        log(f"pixdex repair: found: {line}")
    for line in report.actions:
        log(f"pixdex repair: {line}")
    return report


def _finish_healthy(path: Path, report: RepairReport) -> RepairReport:
    """A healthy store: only record checksums it lacks (stores written before they existed)."""
    with StoreWriter(path) as w:
        missing = len(set(w._referenced()) - {MANIFEST} - set(w.manifest.get("files") or {}))
        if missing:
            w._dirty = True
            report.actions.append(f"recorded checksums of {missing} files")
    report.count = Store.open(path).count
    return report


def _read_manifest(path: Path) -> tuple[dict | None, str | None]:
    """(the manifest as far as it is readable, why it is damaged or None)."""
    try:
        text = (path / MANIFEST).read_bytes()
    except OSError as exc:
        return None, f"{path / MANIFEST}: {exc.strerror or exc}"
    try:
        return parse_manifest(path, text), None
    except StoreDamaged as exc:
        why = f"{exc.path}: {exc.reason}"
        try:
            m = json.loads(text)
        except ValueError:
            return None, why
        return (m if isinstance(m, dict) else None), why


def _rebuild(path: Path, old: dict | None, model, device: str, progress: bool, report: RepairReport,
             log: Callable[[str], None]) -> dict:
    """A consistent manifest from what is intact (re-embedding shards whose embeddings are lost)."""
    old = old or {}
    shards = _shards_on_disk(path, old)
    model_rec, dim = _model_record(path, old, shards, model)
    files = old.get("files") if isinstance(old.get("files"), dict) else {}
    for sh in shards:
        _check_shard(path, sh, dim, files, report)
    next_shard = max([sh.number + 1 for sh in shards] + [int(old.get("next_shard", 0) or 0)])
    kept, deleted_extra = [], []
    for sh in sorted((s for s in shards if s.meta_table is not None), key=lambda s: s.first_id):
        if kept and sh.first_id < kept[-1]["first_id"] + kept[-1]["rows"]:
            report.actions.append(f"ignored {sh.metadata}: its ids overlap another shard")
            continue
        if not sh.emb_ok:
            emb_rel = embeddings_file(next_shard)
            next_shard += 1
            emb, lost = _reembed(path, sh, model_rec, dim, model, device, progress, log)
            save_npy(path / emb_rel, emb)
            deleted_extra += lost
            report.reembedded += sh.rows - len(lost)
            report.actions.append(f"re-embedded {sh.rows - len(lost)} of {sh.rows} rows of "
                                  f"{sh.embeddings or 'a lost'} shard into {emb_rel}"
                                  + (f"; {len(lost)} rows whose file is gone or changed"
                                     f" marked removed" if lost else ""))
            _set_aside(sh.embeddings, report)
            sh.embeddings = emb_rel
        kept.append({"embeddings": sh.embeddings, "metadata": sh.metadata, "first_id": sh.first_id,
                     "rows": sh.rows, "dtype": "float16", "dim": dim})
    for sh in shards:
        if sh.meta_table is None:
            what = f"ids {sh.first_id}..{sh.first_id + sh.rows - 1}" if sh.first_id >= 0 else "its rows"
            report.actions.append(f"dropped shard {sh.number:06d} ({what}): its metadata is lost; "
                                  f"`pixdex index` embeds those files again")
            report.dropped_rows += sh.rows
            for rel in [sh.embeddings, *sh._candidates]:  # type: ignore[attr-defined]
                _set_aside(rel, report)
    ends = [s["first_id"] + s["rows"] for s in kept]
    next_id = max([*ends, int(old.get("next_id", 0) or 0) if isinstance(old.get("next_id"), int) else 0])
    gaps, end = [], 0
    for s in kept:
        if s["first_id"] > end:
            gaps.append([end, s["first_id"]])
        end = s["first_id"] + s["rows"]
    if next_id > end:
        gaps.append([end, next_id])
    gaps = _merge([*(old.get("gaps") or []), *gaps]) if gaps else list(old.get("gaps") or [])
    live = {(s["first_id"], s["rows"]) for s in kept}
    gen = max(int(old.get("generation", 0) or 0) if isinstance(old.get("generation"), int) else 0,
              _max_generation(path)) + 1
    m = {"format": FORMAT, "version": FORMAT_VERSION, "model": model_rec, "dim": dim, "dtype": "float16",
         "metric": "inner_product", "normalized": True, "shards": kept, "gaps": gaps, "next_id": next_id,
         "next_shard": next_shard, "generation": gen, "index": {}, "tags": {}, "files": {},
         "created": old.get("created") if isinstance(old.get("created"), str) else now_iso(),
         "updated": now_iso()}
    deleted = _deleted_ids(path, old, report)
    in_store = [i for i in sorted(set(deleted) | set(deleted_extra))
                if any(f <= i < f + r for f, r in live)]
    if in_store:
        m["deleted"] = deleted_file(gen)
        save_npy(path / m["deleted"], np.array(in_store, np.int64))
    rows = sum(s["rows"] for s in kept)
    m["errors"], n_errors = _error_table(path, old, report)
    if not m["errors"]:
        m.pop("errors")
    m["tags"] = _tag_sets(path, old, report)
    m["counts"] = {"rows": rows, "items": rows - len(in_store), "deleted": len(in_store), "errors": n_errors}
    check_manifest(path, m)
    return m


def _problem(report: RepairReport, file: Path | str, why: str) -> None:
    """Note a damaged file once (verify() may have named it already)."""
    if not any(p.startswith(f"{file}: ") for p in report.problems):
        report.problems.append(f"{file}: {why}")


def _merge(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _shards_on_disk(path: Path, old: dict) -> list[_Shard]:
    """Every shard number the manifest or the shards/ folder knows, with its best candidate files."""
    by_number: dict[int, _Shard] = {}
    listing = sorted(p.name for p in (path / "shards").iterdir()) if (path / "shards").is_dir() else []
    for name in listing:
        n = shard_number(name)
        if n is not None:
            by_number.setdefault(n, _Shard(n, None, None))
    entries = [s for s in old.get("shards") or [] if isinstance(s, dict)]
    for s in entries:
        n = shard_number(str(s.get("embeddings", "")))
        if n is not None:
            sh = by_number.setdefault(n, _Shard(n, None, None))
            if isinstance(s.get("first_id"), int) and isinstance(s.get("rows"), int):
                sh.first_id, sh.rows = s["first_id"], s["rows"]
            if isinstance(s.get("metadata"), str):
                sh.metadata = s["metadata"]
    for n, sh in by_number.items():
        emb = embeddings_file(n)
        sh.embeddings = emb if (path / emb).is_file() else None
        metas = sorted(metadata_files_of(n, listing), key=lambda x: (len(x), x), reverse=True)  # newest first
        named = [sh.metadata] if sh.metadata and (path / sh.metadata).is_file() else []
        sh.metadata = None
        sh._candidates = named + [f"shards/{x}" for x in metas if f"shards/{x}" not in named]  # type: ignore[attr-defined]
    return [by_number[n] for n in sorted(by_number)]


def _check_shard(path: Path, sh: _Shard, dim: int, files: dict, report: RepairReport) -> None:
    """Pick the shard's first intact metadata file; check its embeddings against it and their record."""
    want = (sh.first_id, sh.rows) if sh.first_id >= 0 else None
    for rel in sh._candidates:  # type: ignore[attr-defined]
        try:
            table = pq.read_table(path / rel)
            ids = table["id"].to_numpy()
        except Exception as exc:  # any unreadable file is damaged
            _problem(report, path / rel, f"unreadable metadata ({type(exc).__name__})")
            continue
        first = int(ids[0]) if len(ids) else -1
        if not len(ids) or not np.array_equal(ids, np.arange(first, first + len(ids))) or (
                want is not None and want != (first, len(ids))):
            _problem(report, path / rel, f"its ids are not those of shard {sh.number:06d}")
            continue
        sh.metadata, sh.meta_table, sh.first_id, sh.rows = rel, table, first, len(ids)
        break
    if sh.metadata is None:
        report.problems.append(f"shard {sh.number:06d}: no readable metadata file")
    if sh.embeddings is None:
        _problem(report, path / embeddings_file(sh.number), "missing")
        return
    try:
        emb = np.load(path / sh.embeddings, mmap_mode="r")
        shape_ok = emb.dtype == np.float16 and emb.ndim == 2 and emb.shape[1] == dim
        rows = emb.shape[0] if shape_ok else -1
        del emb
    except Exception as exc:
        _problem(report, path / sh.embeddings, f"unreadable ({type(exc).__name__})")
        return
    rec = files.get(sh.embeddings) or {}
    if not shape_ok or (sh.meta_table is not None and rows != sh.rows):
        _problem(report, path / sh.embeddings, "wrong shape for its shard")
    elif rec.get("sha256") and sha256_file(path / sh.embeddings) != rec["sha256"]:
        _problem(report, path / sh.embeddings, "sha256 differs from the manifest's record")
    else:
        sh.emb_ok = True
        if sh.meta_table is None:
            sh.rows = rows


def _model_record(path: Path, old: dict, shards: list[_Shard], model) -> tuple[dict, int]:
    """The store's model record and dim: the manifest's, else the one metadata files carry, else `model`'s."""
    if isinstance(old.get("model"), dict) and isinstance(old.get("dim"), int):
        return old["model"], old["dim"]
    for sh in shards:
        for rel in sh._candidates:  # type: ignore[attr-defined]
            try:
                meta = pq.read_schema(path / rel).metadata or {}
            except Exception:
                continue
            if MODEL_KEY in meta:
                rec = json.loads(meta[MODEL_KEY])
                return rec["model"], int(rec["dim"])
    if model is not None:
        from indexer.encoder import Encoder

        enc = model if isinstance(model, Encoder) else Encoder(model, device="cpu")
        return enc.info.record(), enc.info.dim
    raise PixdexError(f"store {path}: the manifest is lost and no metadata file names the model; "
                      f"pass --model with the model the store was built with")


def _reembed(path: Path, sh: _Shard, model_rec: dict, dim: int, model, device: str, progress: bool,
             log: Callable[[str], None]) -> tuple[np.ndarray, list[int]]:
    """Embeddings for a shard from its files (rows whose file is gone or changed: zeros, returned as lost)."""
    from tqdm.auto import tqdm

    from indexer.encoder import Encoder
    from indexer.job import stack_pixels
    from indexer.prepare import DecodeSetup, prepared_stream
    from indexer.sources import file_item

    enc = model if isinstance(model, Encoder) else None
    try:
        enc = enc or Encoder(model or model_rec["name"], device=device)
    except PixdexError as exc:
        raise PixdexError(f"cannot re-embed shard {sh.number:06d}: {exc} (pass --model)") from None
    if not enc.info.matches(model_rec["fingerprint"]) or enc.info.dim != dim:
        raise PixdexError(f"cannot re-embed shard {sh.number:06d}: model {enc.info.name} is not the store's "
                          f"model {model_rec['name']} (pass --model)")
    table = sh.meta_table
    ids = table["id"].to_pylist()
    texts = table["path"].to_pylist()
    raws = table["path_raw"].to_pylist() if "path_raw" in table.column_names else [None] * len(ids)
    from indexer.store import join_path

    paths = [join_path(t, r) for t, r in zip(texts, raws)]
    hashes = table["sha256"].to_pylist()
    emb = np.zeros((len(ids), dim), np.float16)
    usable = [k for k, p in enumerate(paths) if os.path.isabs(p) and os.path.isfile(p)]
    items = [file_item(Path(paths[k]), os.path.dirname(paths[k])) for k in usable]
    done: set[int] = set()
    bar = tqdm(total=len(items), unit="img", desc=f"re-embedding shard {sh.number:06d}", disable=not progress,
               file=sys.stderr)
    batch: list[tuple[int, dict]] = []

    def flush() -> None:
        if batch:
            vecs = enc.embed_pixels(stack_pixels([p.pixels for _, p in batch]))
            for (k, _), v in zip(batch, vecs):
                emb[k] = v
                done.add(k)
            bar.update(len(batch))
            batch.clear()

    setup = DecodeSetup(enc.image_processor, None, enc.image_size)
    for k, (_, prep) in zip(usable, prepared_stream(items, 0, setup, 64)):
        if prep.pixels is not None and prep.sha256 == hashes[k]:
            batch.append((k, prep))
            if len(batch) >= 32:
                flush()
    flush()
    bar.close()
    return emb, [ids[k] for k in range(len(ids)) if k not in done]


def _deleted_ids(path: Path, old: dict, report: RepairReport) -> list[int]:
    """Removed ids: the manifest's list if readable, else the newest readable one on disk."""
    names = [old["deleted"]] if isinstance(old.get("deleted"), str) else []
    if not old or names:  # the manifest is lost, or its list is: the newest one on disk
        names += [p.name for p in sorted(path.glob("deleted-*.npy"), reverse=True) if p.name not in names]
    for rel in names:
        try:
            ids = np.load(path / rel)
            if ids.ndim == 1 and ids.dtype.kind in "iu":
                if rel != old.get("deleted"):
                    report.actions.append(f"took removed rows from {rel}")
                return ids.astype(np.int64).tolist()
        except Exception:
            pass
        _problem(report, path / rel, "unreadable list of removed rows")
    if old.get("counts", {}).get("deleted") if isinstance(old.get("counts"), dict) else False:
        report.actions.append("the list of removed rows is lost: they are live again until `pixdex index` "
                              "removes the ones whose files are gone")
    return []


def _error_table(path: Path, old: dict, report: RepairReport) -> tuple[str | None, int]:
    names = [old["errors"]] if isinstance(old.get("errors"), str) else []
    if not old:
        names += [p.name for p in sorted(path.glob("errors-*.parquet"), reverse=True)]
    for rel in names:
        try:
            return rel, pq.read_table(path / rel).num_rows
        except Exception:
            _problem(report, path / rel, "unreadable error table")
            report.actions.append("dropped the error table: "
                                  "the next `pixdex index` records failing files again")
            _set_aside(rel, report)
    return None, 0


def _tag_sets(path: Path, old: dict, report: RepairReport) -> dict[str, str]:
    """Readable tag sets: the manifest's, or (no manifest) the newest file of each name on disk."""
    if isinstance(old.get("tags"), dict):
        named = dict(old["tags"])
    else:
        named = {}
        for p in sorted((path / "tags").glob("*.parquet")) if (path / "tags").is_dir() else []:
            match = TAG_FILE.match(p.name)
            if match:
                named[match.group(1)] = f"tags/{p.name}"  # sorted: the newest generation wins
    out = {}
    for name, rel in sorted(named.items()):
        try:
            if "id" not in pq.read_schema(path / rel).names:
                raise ValueError("no id column")
            pq.read_table(path / rel)
            out[name] = rel
        except Exception:
            _problem(report, path / rel, "unreadable tag set")
            report.actions.append(f"dropped tag set {name!r}: "
                                  f"run `pixdex classify ... --save-as {name}` again")
            _set_aside(rel, report)
    return out


def _max_generation(path: Path) -> int:
    gens = [0]
    for p in [*path.glob("*"), *path.glob("tags/*"), *path.glob("shards/*")]:
        gens += [int(g)
                 for g in re.findall(r"-g?(\d{6})(?:-part-\d+)?\.(?:npy|parquet|faiss|ivfdata)$", p.name)
                 if not p.name.startswith(("emb-", "meta-")) or "-g" in p.name]
    return max(gens)


def _set_aside(rel: str | None, report: RepairReport) -> None:
    if rel and rel not in report.moved:
        report.moved.append(rel)


def _quarantine(path: Path, rel: str, report: RepairReport) -> None:
    """Move a damaged file to damaged/ (kept for inspection, out of the store's way)."""
    if not (path / rel).is_file():
        return
    target = path / "damaged" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path / rel, target)
    report.actions.append(f"moved {rel} to damaged/")


def _reindex(path: Path, report: RepairReport, log: Callable[[str], None]) -> None:
    """Rebuild the FAISS index from the embeddings (the new manifest names none) and record checksums."""
    from indexer.index_build import update_index

    with StoreWriter(path) as w:
        record = update_index(w, "auto", log=log)
        w.commit()
    report.actions.append(f"rebuilt the {record.get('factory') or 'empty'} index over "
                          f"{record.get('ntotal', 0)} vectors from the embeddings")
    report.count = Store.open(path).count
