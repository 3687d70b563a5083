"""The embedding job: sources -> safe decode (worker processes) -> encoder -> store -> FAISS index.

Incremental like rclip: unchanged files (size+mtime) are skipped, changed ones re-encoded, renamed or
copied ones (same content hash) reuse their stored embedding, as do copies met within one run, and
deleted ones are removed. Rows are committed a shard at a time, so a killed job resumes where its
last commit left off.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from indexer.backfill import fill_photo_columns
from indexer.decode import DEFAULT_MAX_PIXELS
from indexer.encoder import Encoder
from indexer.errors import PixdexError
from indexer.exif import PhotoMeta
from indexer.faiss_index import INDEX_TYPES
from indexer.index_build import update_index
from indexer.items import SourceItem
from indexer.models import DEFAULT_MODEL
from indexer.params import BATCH_SIZE, GPUS_PER_WORKER, MAX_PIXELS, SHARD_ROWS, WORKERS, Bound, check_device
from indexer.prepare import DecodeSetup, prepared_stream
from indexer.remote import local_path
from indexer.remote_store import local_store
from indexer.sources import check_sources, iter_sources
from indexer.store import Store, StoreWriter, display_path, is_store


@dataclass
class IndexSummary:
    """What a job did, as the closing line and `--json` report it."""

    indexed: int = 0  # new paths, encoded
    unchanged: int = 0  # same size+mtime, or same content after a touch
    updated: int = 0  # changed files: the old row replaced by a new one
    reused: int = 0  # new paths whose content was stored, or encoded earlier in this run: no encoding
    removed: int = 0  # stored files that are gone
    failed: int = 0  # files that could not be read or decoded (see the store's error table)
    # stored rows of an older store given their photo columns (headers read, no encoding)
    photo_filled: int = 0
    metadata_warnings: int = 0  # images whose EXIF/XMP was partly unreadable (those fields are null)
    encoded: int = 0  # images that went through the model
    seconds: float = 0.0
    images_per_second: float = 0.0  # images processed (encoded or reused) per second of the encoding phase
    count: int = 0  # items in the store afterwards
    index: dict = field(default_factory=dict)
    store: str = ""

    def line(self) -> str:
        return (
            f"indexed {self.indexed}, unchanged {self.unchanged}, updated {self.updated}, "
            f"reused {self.reused}, "
            f"removed {self.removed}, failed {self.failed} in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s); store has {self.count} items"
            + (f"; photo columns added to {self.photo_filled} stored items" if self.photo_filled else "")
            + (f"; {self.metadata_warnings} with unreadable photo metadata" if self.metadata_warnings else "")
        )

    def to_dict(self) -> dict:
        return asdict(self)


class OldRow(NamedTuple):
    """What the store holds for a path."""

    id: int
    size: int
    mtime: float
    sha256: str
    width: int
    height: int


@dataclass
class Plan:
    """The scan's verdict: what to decode, what is unchanged, what is gone."""

    work: list[SourceItem]
    changed: dict[str, OldRow]  # path -> its stored row, for work items that replace one
    unchanged: int
    gone: list[int]  # ids of stored rows whose files are gone
    gone_paths: set[str]  # paths in scope that no longer exist (their error entries are dropped too)
    gone_hashes: set[str]  # content hashes of gone rows: a new file with one of them is a rename


def stored_rows(snap: Store) -> dict[str, OldRow]:
    """path -> stored row, for every live row."""
    meta = snap.metadata().select(["id", "path", "bytes", "mtime", "sha256", "width", "height"]).to_pydict()
    return {snap.real_path(p): OldRow(i, s, m, h, w, ht) for i, p, s, m, h, w, ht in zip(
        meta["id"], meta["path"], meta["bytes"], meta["mtime"], meta["sha256"], meta["width"],
        meta["height"])}


def plan_work(items: list[SourceItem], by_path: dict[str, OldRow], error_paths: list[str],
              roots: set[str]) -> Plan:
    """Compare scanned items with the stored rows: new and changed ones are work, missing ones are gone."""
    work, changed, unchanged, seen = [], {}, 0, set()
    for item in items:
        old = by_path.get(item.key)
        if item.size < 0 and old is not None and item.error is None:
            continue  # listed but gone: removed below
        seen.add(item.key)
        if old is None:
            work.append(item)
        elif item.sha256 is not None and item.sha256 == old.sha256 and item.size == old.size:
            unchanged += 1  # dataset rows: the content hash decides
        elif item.sha256 is None and old.size == item.size and old.mtime == item.mtime:
            unchanged += 1
        else:
            changed[item.key] = old
            work.append(item)
    gone = sorted((row for path, row in by_path.items() if path not in seen and _under(path, roots)),
                  key=lambda r: r.id)
    gone_paths = {p for p in list(by_path) + list(error_paths) if p not in seen and _under(p, roots)}
    return Plan(work, changed, unchanged, [r.id for r in gone], gone_paths, {r.sha256 for r in gone})


def stack_pixels(batch: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batch]) for k in batch[0]}


# ---- the job ----------------------------------------------------------------------------------
def default_workers(encoder: Encoder) -> int:
    """Decoding processes: all cores but the one the model runs on (CPU), all cores on a GPU."""
    cores = os.cpu_count() or 1
    return max(1, min(16, cores - 1 if encoder.device.type == "cpu" else cores))


class _Batcher:
    """Collects rows to store; encodes the ones that need the model a batch at a time, in order.

    A file whose content was already encoded in this run (a copy under another path) is not encoded
    again: its row takes the first copy's embedding, queued or already written.
    """

    def __init__(self, encoder: Encoder, writer: StoreWriter, batch_size: int, bar):
        self.encoder, self.writer, self.batch_size, self.bar = encoder, writer, batch_size, bar
        # (row, pixels, vector, index of the queued row it copies)
        self.queue: list[tuple[dict, dict | None, np.ndarray | None, int | None]] = []
        self.queued: dict[str, int] = {}  # sha256 -> queue index, rows to encode in the next flush
        self.written: dict[str, int] = {}  # sha256 -> store id, rows encoded and written in this run
        self.to_encode = 0
        self.encoded = 0

    def add(self, row: dict, pixels: dict | None = None, vector: np.ndarray | None = None,
            fresh: bool = False) -> None:
        """Queue a row with its pixels to encode, or its vector
        (fresh: just encoded elsewhere, e.g. by Ray)."""
        if pixels is not None:
            self.queued.setdefault(row["sha256"], len(self.queue))
        self.queue.append((row, pixels, vector, None))
        self.to_encode += pixels is not None or fresh
        self.encoded += fresh
        self._maybe_flush()

    def add_copy(self, row: dict) -> bool:
        """Queue `row` with the embedding of the same content encoded earlier in this run; False if none."""
        sha = row["sha256"]
        if sha in self.queued:
            self.queue.append((row, None, None, self.queued[sha]))
        elif sha in self.written:
            self.queue.append((row, None, self.writer.vectors([self.written[sha]])[0], None))
        else:
            return False
        self._maybe_flush()
        return True

    def _maybe_flush(self) -> None:
        if self.to_encode >= self.batch_size or len(self.queue) >= 4 * self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.queue:
            return
        pixels = [p for _, p, _, _ in self.queue if p is not None]
        emb = iter(self.encoder.embed_pixels(stack_pixels(pixels)) if pixels else [])
        vectors: list[np.ndarray] = []
        for _, p, v, copy_of in self.queue:
            vectors.append(next(emb) if p is not None else vectors[copy_of] if copy_of is not None else v)
        ids = self.writer.append([r for r, _, _, _ in self.queue], np.stack(vectors))
        for (row, p, _, _), i in zip(self.queue, ids):
            if p is not None:
                self.written.setdefault(row["sha256"], i)
        self.encoded += len(pixels)
        self.bar.update(len(self.queue))
        self.queue, self.queued, self.to_encode = [], {}, 0


def _consume(stream, plan: Plan, writer: StoreWriter, batcher: _Batcher, by_hash: dict[str, OldRow],
             snap: Store, summary: IndexSummary, bar, log: Callable[[str], None]) -> None:
    """Turn prepared items into store rows: errors, touched files, reused embeddings, images to encode."""
    for item, prep in stream:
        old = plan.changed.get(item.key)
        if prep.error is not None:
            summary.failed += 1
            writer.record_error(item.key, prep.error, item.size, item.mtime)
            if old is not None:  # the file changed into something undecodable: drop the stale row
                writer.delete([old.id])
            log(f"pixdex index: skipped {item.key}: {prep.error}")
            bar.update(1)
            continue
        sha = prep.sha256
        photo = prep.photo or PhotoMeta()
        if photo.problems:
            summary.metadata_warnings += 1
            log(f"pixdex index: {item.key}: photo metadata: {'; '.join(photo.problems)}")
        if old is not None and old.sha256 == sha:  # touched, same content: keep the row, note the mtime
            writer.set_mtime(old.id, item.mtime)
            writer.set_columns(old.id, photo.columns())
            writer.forget_errors([item.key])
            summary.unchanged += 1
            bar.update(1)
            continue
        reuse = by_hash.get(sha)
        width, height = (prep.width, prep.height) if prep.width is not None else (reuse.width, reuse.height)
        row = {"path": item.key, "bytes": prep.bytes, "mtime": item.mtime, "width": width,
               "height": height, "sha256": sha, **photo.columns(), **item.extra}
        if old is not None:
            writer.delete([old.id])
            summary.updated += 1
        if reuse is not None:
            batcher.add(row, vector=snap.vectors([reuse.id])[0])
            summary.reused += old is None
        elif prep.pixels is not None and batcher.add_copy(row):
            summary.reused += old is None  # a copy of a file encoded earlier in this run
        elif prep.embedding is not None:  # embedded by the Ray engine's actors
            batcher.add(row, vector=prep.embedding, fresh=True)
            summary.indexed += old is None
        else:
            batcher.add(row, pixels=prep.pixels)
            summary.indexed += old is None


def stored_model_name(store: str | os.PathLike) -> str | None:
    """The model a local store records (so re-indexing needs no --model), else None."""
    path = local_path(str(store))
    return Store.open(path).model.get("name") or None if is_store(path) else None


def index_collection(
    sources: list[str] | str,
    store: str | os.PathLike,
    model: str | Encoder | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    index: str = "auto",
    max_index_memory: int | None = None,
    include_hidden: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    shard_rows: int = 4096,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
) -> IndexSummary:
    """Index `sources` into `store` (created if missing) and bring its FAISS index up to date.

    `model` defaults to the model a local store was built with, and to DEFAULT_MODEL for a new store.
    Files that cannot be decoded go to the store's error table; the job carries on. Returns the summary.
    `store` may be a URL (s3://...): the job runs on a local copy and publishes it at the end.
    engine="ray" decodes and embeds on a Ray cluster (`workers` embedding actors with `gpus_per_worker`
    GPUs each; a local cluster when no `ray_address`) and builds a sharded index's parts as Ray tasks.
    """
    log = log or (lambda m: tqdm.write(display_path(m), file=sys.stderr))  # file names that are not UTF-8
    specs = [str(sources)] if isinstance(sources, (str, os.PathLike)) else sources
    if not specs:
        raise PixdexError("no sources given")
    if index not in INDEX_TYPES:
        raise PixdexError(f"unknown index type {index!r}; choose one of {', '.join(INDEX_TYPES)}")
    check_index_params(batch_size, workers, shard_rows, max_pixels, gpus_per_worker, max_index_memory)
    if engine not in ("local", "ray"):
        raise PixdexError(f"unknown engine {engine!r}; choose local or ray")
    specs = check_sources(specs)
    if model is None:
        model = stored_model_name(store) or DEFAULT_MODEL
    if not isinstance(model, Encoder):
        check_device(device)
    t0 = time.perf_counter()
    # with Ray the driver only needs the model's facts (name, fingerprint, processor): the actors embed
    encoder = (model if isinstance(model, Encoder)
               else Encoder(model, device="cpu" if engine == "ray" else device))
    summary = IndexSummary(store=str(store))
    with (local_store(store, publish=True) as path,
          StoreWriter(path, encoder.info, shard_rows=shard_rows) as writer):
        snap = writer.snapshot()
        by_path = stored_rows(snap)
        by_hash = {row.sha256: row for row in by_path.values()}
        items = list(iter_sources(specs, include_hidden, warn=log))
        roots = {i.root for i in items} | {os.path.abspath(local_path(s)) for s in specs
                                           if os.path.exists(local_path(s))}
        plan = plan_work(items, by_path, writer.error_paths(), roots)
        summary.unchanged = plan.unchanged
        if engine == "local":
            workers = default_workers(encoder) if workers is None else workers
        bar = tqdm(total=len(plan.work), unit="img", desc="indexing", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        batcher = _Batcher(encoder, writer, batch_size, bar)
        t_enc = time.perf_counter()
        if engine == "ray":
            from indexer.ray_engine import ray_prepared_stream

            setup = DecodeSetup(encoder.image_processor, max_pixels, encoder.image_size,
                                frozenset(plan.gone_hashes))
            stream = ray_prepared_stream(plan.work, encoder, setup, batch_size, workers,
                                         gpus_per_worker, ray_address, device, log)
        else:
            setup = DecodeSetup(encoder.image_processor, max_pixels, encoder.image_size,
                                frozenset(plan.gone_hashes))
            stream = prepared_stream(plan.work, workers, setup, 4 * batch_size)
        try:
            _consume(stream, plan, writer, batcher, by_hash, snap, summary, bar, log)
        finally:
            stream.close()  # stops decoding workers at once if the job is interrupted
        batcher.flush()
        bar.close()
        enc_seconds = time.perf_counter() - t_enc
        writer.delete(plan.gone)
        writer.forget_errors(plan.gone_paths)
        summary.removed = len(plan.gone)
        summary.photo_filled, warned = fill_photo_columns(  # an older store gains the photo columns
            writer, snap, {i.key: i for i in items}, set(plan.changed) | plan.gone_paths, log, progress)
        summary.metadata_warnings += warned
        writer.commit()
        summary.index = update_index(writer, index, max_index_memory, log=log, engine=engine)
        writer.commit()
        summary.count = writer.snapshot().count
        summary.encoded = batcher.encoded
    write_fast_exports(encoder, log)
    done = summary.indexed + summary.updated + summary.reused
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.images_per_second = round(done / enc_seconds, 2) if done and enc_seconds > 0 else 0.0
    return summary


def _under(path: str, roots: set[str]) -> bool:
    """True when a stored path belongs to one of the scanned sources (so its absence means removal)."""
    return any(path == r or path.startswith((r.rstrip("/") + "/", r + "#")) for r in roots)


def check_index_params(batch_size: int, workers: int | None, shard_rows: int, max_pixels: int | None,
                       gpus_per_worker: float, max_index_memory: int | None) -> None:
    """Refuse a bad job parameter before anything is read, loaded or written."""
    BATCH_SIZE.check(batch_size, "batch_size")
    if workers is not None:
        WORKERS.check(workers, "workers")
    SHARD_ROWS.check(shard_rows, "shard_rows")
    if max_pixels is not None:
        MAX_PIXELS.check(max_pixels, "max_pixels")
    GPUS_PER_WORKER.check(gpus_per_worker, "gpus_per_worker")
    if max_index_memory is not None:
        Bound(int, 1).check(max_index_memory, "max_index_memory")


def write_fast_exports(encoder: Encoder, log: Callable[[str], None]) -> None:
    """Leave the model's ONNX exports (indexer.onnx_export) so later queries skip torch;
    never fails the job."""
    from indexer.onnx_export import ensure_exports

    try:
        ensure_exports(encoder, log)
    except Exception as exc:  # the store is committed; queries fall back to transformers
        log(f"fast query exports: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")

