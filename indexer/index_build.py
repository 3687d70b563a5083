"""Keep a store's FAISS index in step with its rows: incremental adds/removes, rebuilds when needed.

Vectors are streamed from the store's shards (bounded memory beyond the index itself); recall@10 is
measured against exact search on a sample of noisy stored vectors and recorded with the tuned
nprobe/efSearch in the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from indexer.atomic import write_atomic
from indexer.faiss_index import (
    MIN_PQ_TRAIN,
    SHARDED_REQUEST_TYPES,
    TARGET_RECALL,
    IndexSpec,
    TuneResult,
    choose_index,
    ivf_of,
    new_index,
    tune_params,
)
from indexer.index_sample import BATCH_ROWS, recall_sample, train_on_sample
from indexer.sharded_index import build_sharded, process_runner
from indexer.store import Store, StoreWriter
from indexer.store_format import IndexRecord, index_file

REBUILD_GROWTH = 2.0  # an IVF trained on n vectors is rebuilt once it holds more than 2n
TRAIN_SAMPLE = 200_000  # vectors used to train IVF centroids / PQ codebooks


def needs_rebuild(info: dict, spec_type: str, count: int, removed_any: bool) -> str | None:
    """Why the index must be rebuilt rather than updated in place (None: update is fine)."""
    if not info.get("file"):
        return "no index yet"
    if info.get("type") != spec_type:
        return f"index type changes from {info.get('type')} to {spec_type}"
    if spec_type == "hnsw" and removed_any:
        return "HNSW cannot remove vectors"
    if spec_type.startswith("ivf") and count > REBUILD_GROWTH * max(1, info.get("trained_on", count)):
        return f"IVF trained on {info.get('trained_on')} vectors now holds {count}: retraining"
    return None


def stored_spec(info: dict) -> IndexSpec:
    """The IndexSpec an existing index was built with (kept when it is updated in place)."""
    return IndexSpec(info["type"], info.get("factory", ""), info.get("nlist", 0), info.get("pq_m", 0),
                     info.get("reason", ""))


def update_index(writer: StoreWriter, index_type: str = "auto", max_memory: int | None = None,
                 log: Callable[[str], None] = print, engine: str = "local") -> dict:
    """Bring the index up to date with the committed rows; returns the manifest's index record.

    `index_type` auto keeps the type the store's index was explicitly built with
    (e.g. an earlier --index ivf).
    sharded / sharded-parts rebuild by parts (indexer.sharded_index) whenever the rows changed; with
    engine="ray" the parts are Ray tasks.
    """
    snap = writer.snapshot()
    info = snap.index_info
    requested = index_type if index_type != "auto" else info.get("requested", "auto")
    n = snap.count
    if requested in SHARDED_REQUEST_TYPES and n >= MIN_PQ_TRAIN // 39:  # 16 vectors train 4-bit PQ codebooks
        if snap.index_is_current() and info.get("requested") == requested:
            return writer.manifest["index"]
        if engine == "ray":
            from indexer.ray_engine import ray_runner as runner
        else:
            runner = process_runner
        return build_sharded(writer, max_memory=max_memory, merge=requested == "sharded", runner=runner,
                             log=log)
    # too few vectors for a sharded build
    choice = "auto" if requested in SHARDED_REQUEST_TYPES else requested
    spec = (choose_index(n, snap.dim, max_memory, choice) if n
            else IndexSpec("flat", "Flat", reason="empty store"))
    if snap.index_is_current() and spec.type == info.get("type"):
        if requested != info.get("requested", "auto"):
            writer.set_index(replace(IndexRecord.from_dict(info), requested=requested))
        return writer.manifest["index"]
    removed_any = len(snap.deleted_ids) > info.get("deleted", 0)
    why = needs_rebuild(info, spec.type, n, removed_any)
    t0 = time.perf_counter()
    queries, truth = recall_sample(snap, spec.type)
    index, tuned, how, trained_on = None, None, "updated", info.get("trained_on", n)
    if why is None:
        index, spec = _update_in_place(snap, info), stored_spec(info)
        tuned = tune_params(index, queries, truth, spec) if n else None
        if tuned and tuned.recall_at_10 < TARGET_RECALL <= info.get("recall_at_10", 0):
            why = f"recall@10 fell to {tuned.recall_at_10:.3f} after adding vectors: rebuilding"
            spec = choose_index(n, snap.dim, max_memory, choice)
    if why is not None:
        if n:
            log(f"pixdex index: building {spec.factory} index over {n} vectors ({why}; {spec.reason})")
        index, how, trained_on = _build(snap, spec), "built", n
        tuned = tune_params(index, queries, truth, spec) if n else None
    rel = index_file(snap.manifest["generation"] + 1)
    import faiss

    write_atomic(writer.path / rel, lambda p: faiss.write_index(index, str(p)))
    ivf = ivf_of(index)
    record = IndexRecord(spec.type, spec.factory, int(ivf.nlist) if ivf is not None else spec.nlist,
                         spec.pq_m, spec.reason, file=rel, rows=snap.manifest["counts"]["rows"],
                         deleted=len(snap.deleted_ids), max_id=int(snap.manifest["next_id"]) - 1,
                         trained_on=trained_on, requested=requested, how=how,
                         build_seconds=round(time.perf_counter() - t0, 3))
    writer.set_index(with_tuning(record, tuned, int(index.ntotal)) if tuned else record)
    return writer.manifest["index"]


def with_tuning(record: IndexRecord, tuned: TuneResult, ntotal: int) -> IndexRecord:
    """The record with the tuned search parameters and the recall they reach."""
    rescored = tuned.rescored_recall_at_10
    return replace(record, params=tuned.params, recall_at_10=round(tuned.recall_at_10, 4), ntotal=ntotal,
                   search_ms_per_query=round(tuned.search_ms, 4),
                   rescored_recall_at_10=round(rescored, 4) if rescored is not None else None)


def _build(snap: Store, spec: IndexSpec, seed: int = 0):
    """A new index over the snapshot's live rows: trained on a sample, filled batch by batch."""
    index = new_index(spec, snap.dim)
    if not index.is_trained:
        train_on_sample(index, snap, TRAIN_SAMPLE, seed)
    for ids, vecs in snap.iter_embeddings(BATCH_ROWS):
        index.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids)
    return index


def _update_in_place(snap: Store, info: dict):
    """The existing index with removed ids taken out and rows newer than it added."""
    import faiss

    index = faiss.read_index(str(snap.index_path()))  # fully in memory: a memory-mapped IVF is read-only
    if len(snap.deleted_ids) > info.get("deleted", 0):
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(snap.deleted_ids, np.int64)))
    last = int(info.get("max_id", -1))
    for ids, vecs in snap.iter_embeddings(BATCH_ROWS, start_id=last + 1):
        new = ids > last
        if new.any():
            index.add_with_ids(np.ascontiguousarray(vecs[new], np.float32), ids[new])
    return index
