"""Sharded IVF-PQ builds: parts filled in parallel processes, merged on disk, relocatable, bounded memory."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_faiss_index import DIM, INFO, clustered

from indexer.sharded_index import ONDISK, PARTS, build_sharded, plan_sharded
from indexer.store import Store, StoreWriter
from search import Searcher

N = 6000


def make_store(path, n: int = N, shard_rows: int = 1000, seed: int = 0):
    with StoreWriter(path, INFO, shard_rows=shard_rows) as w:
        vecs = clustered(n, seed)
        for start in range(0, n, shard_rows):
            rows = [{"path": f"/img/{k}.png", "bytes": 1, "mtime": 0.0, "width": 1, "height": 1,
                     "sha256": f"{k}", "group": "even" if k % 2 == 0 else "odd"}
                    for k in range(start, min(n, start + shard_rows))]
            w.append(rows, vecs[start : start + shard_rows])
            w.commit()
    return vecs


def sharded(path, merge: bool = True, workers: int = 2, max_memory: int | None = None) -> dict:
    with StoreWriter(path) as w:
        snap = w.snapshot()
        plan = plan_sharded([s["rows"] for s in snap.manifest["shards"]], DIM, max_memory, workers, nlist=32)
        return build_sharded(w, plan, merge=merge, log=lambda m: None)


def top_ids(store_path, queries: np.ndarray, k: int = 10) -> np.ndarray:
    store = Store.open(store_path)
    index = store.load_index()
    return index.search(np.ascontiguousarray(queries), k)[1]


def test_plan_keeps_every_worker_within_the_memory_budget():
    shard_rows = [65_536] * 160  # ~10M rows
    for budget in (1 << 30, 4 << 30):
        plan = plan_sharded(shard_rows, 512, budget, workers=2)
        assert plan.memory_per_worker <= budget // 2
        assert sorted(k for p in plan.parts for k in p) == list(range(160))  # every shard in exactly one part
        assert plan.train_rows * 512 * 4 <= budget // 4
    small, large = plan_sharded(shard_rows, 512, 1 << 30, 2), plan_sharded(shard_rows, 512, 4 << 30, 2)
    assert len(small.parts) > len(large.parts)  # a tighter budget splits the build into more parts
    assert small.spec.factory.endswith(",PQ64")  # 512 dims -> 64-byte codes


def test_merged_on_disk_index_finds_stored_vectors_and_records_its_recall(tmp_path):
    path = tmp_path / "s"
    vecs = make_store(path)
    record = sharded(path)
    assert record["type"] == ONDISK and record["ntotal"] == N
    assert record["plan"]["parts"] >= 2 and record["recall_at_10"] >= 0.7 and record["pq_m"] == 16
    assert (path / record["files"][0]).stat().st_size >= N * (DIM // 8 + 8)
    assert not list(path.glob("*-part-*")) and not list(path.glob(".tmp-*"))
    found = top_ids(path, vecs[:200], 1)[:, 0]
    assert (found == np.arange(200)).mean() >= 0.9


def test_merged_index_survives_moving_the_store(tmp_path):
    path = tmp_path / "s"
    vecs = make_store(path)
    sharded(path)
    before = top_ids(path, vecs[:50])
    moved = tmp_path / "elsewhere" / "store"
    shutil.copytree(path, moved)
    shutil.rmtree(path)  # the .ivfdata is found beside the moved index, not at its build-time path
    assert (top_ids(moved, vecs[:50]) == before).all()


def test_unmerged_parts_search_as_one_index_with_the_same_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    vecs = make_store(a)
    make_store(b)
    sharded(a, merge=True)
    rec = sharded(b, merge=False)
    assert rec["type"] == PARTS and len(rec["files"]) == rec["plan"]["parts"] >= 2
    assert (top_ids(a, vecs[:100]) == top_ids(b, vecs[:100])).all()


@pytest.mark.parametrize("merge", [True, False])
def test_searcher_filters_and_rescoring_work_on_sharded_indexes(tmp_path, merge):
    path = tmp_path / "s"
    vecs = make_store(path)
    with StoreWriter(path) as w:
        w.delete([0, 2, 4])
    sharded(path, merge=merge)
    s = Searcher(path)
    hits = s.search_embedding(vecs[6], k=5)
    assert hits[0].id == 6 and abs(hits[0].score - 1.0) < 2e-3  # exact re-scoring of PQ candidates
    odd = s.search_embedding(vecs[6], k=20, where="group == 'odd'")
    assert len(odd) == 20 and all(h.id % 2 == 1 for h in odd)
    assert all(h.id not in (0, 2, 4) for h in s.search_embedding(vecs[0], k=50))


def test_a_writer_reopening_the_store_keeps_the_sharded_index_files(tmp_path):
    path = tmp_path / "s"
    vecs = make_store(path)
    rec = sharded(path)
    with StoreWriter(path):
        pass  # opening sweeps unreferenced files
    assert (path / rec["files"][0]).exists()
    assert top_ids(path, vecs[:5], 1)[:, 0].tolist() == [0, 1, 2, 3, 4]
