"""Keep a store's FAISS index in step with its rows: incremental adds/removes, rebuilds when needed."""

from __future__ import annotations

import time

import numpy as np

from indexer.atomic import write_atomic
from indexer.faiss_index import build_index, choose_index, index_record, ivf_of, tune
from indexer.store import StoreWriter

REBUILD_GROWTH = 2.0  # an IVF trained on n vectors is rebuilt once it holds more than 2n


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


def update_index(writer: StoreWriter, kind: str = "auto", max_memory: int | None = None, log=print) -> dict:
    """Bring the index up to date with the committed rows; returns the manifest's index record."""
    snap = writer.snapshot()
    info = snap.index_info
    if snap.index_is_current() and kind in ("auto", info.get("requested", "auto")):
        return info
    ids, vectors = snap.embeddings()
    spec = choose_index(len(ids), snap.dim, max_memory, kind)
    removed_any = len(snap.deleted_ids) > info.get("deleted", 0)
    why = needs_rebuild(info, spec.type, len(ids), removed_any)
    t0 = time.perf_counter()
    if why is None:
        index = snap.load_index() if not info.get("type", "").startswith("ivf") else _read_rw(snap.index_path())
        if removed_any:
            index.remove_ids(np.asarray(snap.deleted_ids, np.int64))
        new = ids > info.get("max_id", -1)
        if new.any():
            index.add_with_ids(vectors[new], ids[new])
        trained_on = info.get("trained_on", len(ids))
        how = "updated"
    else:
        if len(ids):
            log(f"pixdex index: building {spec.factory} index over {len(ids)} vectors ({why}; {spec.reason})")
        index = build_index(vectors, ids, spec)
        trained_on = len(ids)
        how = "built"
    tuned = tune(index, vectors, ids, spec) if len(ids) else None
    gen = snap.manifest["generation"] + 1
    rel = f"index-{gen:06d}.faiss"
    import faiss

    write_atomic(writer.path / rel, lambda p: faiss.write_index(index, str(p)))
    record = index_record(spec, tuned, int(index.ntotal)) if tuned else {"type": spec.type, "params": {}}
    record.update(file=rel, rows=snap.manifest["counts"]["rows"], deleted=len(snap.deleted_ids),
                  max_id=int(ids.max()) if len(ids) else -1, trained_on=trained_on, requested=kind,
                  build_seconds=round(time.perf_counter() - t0, 3), how=how)
    if ivf_of(index) is not None:
        record["nlist"] = int(ivf_of(index).nlist)
    writer.set_index(record)
    return record


def _read_rw(path):
    import faiss

    return faiss.read_index(str(path))
