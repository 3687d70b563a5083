"""FAISS index: the choice rule, measured recall and tuned parameters, incremental IVF updates, mmap."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import ModelInfo
from indexer.faiss_index import EXACT_LIMIT, HNSW_LIMIT, bytes_per_vector, choose_index
from indexer.index_build import update_index
from indexer.store import Store, StoreWriter

DIM = 32
INFO = ModelInfo("synthetic", "clip", DIM, "0000synthetic000", "clip")


# ---- the choice rule (pure function) ------------------------------------------------------------
def test_small_collections_get_exact_search():
    assert choose_index(10, 512).type == "flat"
    assert choose_index(EXACT_LIMIT - 1, 512).type == "flat"


def test_medium_collections_get_hnsw_and_large_ones_ivf():
    assert choose_index(EXACT_LIMIT, 512).type == "hnsw"
    assert choose_index(HNSW_LIMIT, 512).type == "hnsw"
    big = choose_index(HNSW_LIMIT + 1, 512)
    assert big.type == "ivf" and big.factory == f"IVF{big.nlist},Flat"
    assert abs(big.nlist - 4 * math.sqrt(HNSW_LIMIT + 1)) <= 1


def test_memory_budget_moves_to_cheaper_indexes():
    n = 500_000
    # full vectors fit but HNSW links do not: IVF-Flat
    budget = n * bytes_per_vector("flat", 512) + 1
    assert choose_index(n, 512, max_memory=budget).type == "ivf"
    # full vectors do not fit: IVF-PQ with the largest code that does
    budget = 50 * n
    spec = choose_index(n, 512, max_memory=budget)
    assert spec.type == "ivfpq" and n * (spec.pq_m + 8) <= budget
    bigger = [m for m in (128, 96, 64, 48, 32, 24, 16, 8, 4) if m > spec.pq_m and 512 % m == 0 and m <= 256]
    assert all(n * (m + 8) > budget for m in bigger)
    # even a small collection leaves exact search when its vectors exceed the budget
    assert choose_index(50_000, 512, max_memory=1_000_000).type == "ivfpq"


def test_explicit_types_are_honoured_with_trainable_sizes():
    assert choose_index(3000, DIM, index_type="flat").type == "flat"
    assert choose_index(3000, DIM, index_type="hnsw").factory == "HNSW32"
    ivf = choose_index(3000, DIM, index_type="ivf")
    assert ivf.type == "ivf" and ivf.nlist <= 3000 // 39
    assert choose_index(3000, DIM, index_type="ivfpq").type == "ivfpq"
    assert choose_index(100, DIM, index_type="ivfpq").type == "ivf"  # too few vectors to train PQ codebooks
    with pytest.raises(ValueError):
        choose_index(10, DIM, index_type="annoy")


# ---- building and tuning on a store -------------------------------------------------------------
def clustered(n: int, seed: int, centers: int = 40) -> np.ndarray:
    """Unit vectors around a few dozen centres, like embeddings of a photo collection."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(1234).standard_normal((centers, DIM))
    v = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fill(path, n: int, seed: int, start: int = 0) -> None:
    with StoreWriter(path, INFO) as w:
        rows = [{"path": f"/img/{start + k}.png", "bytes": 1, "mtime": 0.0, "width": 1, "height": 1,
                 "sha256": f"{seed}-{k}"} for k in range(n)]
        w.append(rows, clustered(n, seed))


def index_now(path, index_type: str = "auto") -> dict:
    with StoreWriter(path) as w:
        record = update_index(w, index_type, log=lambda m: None)
    return record


def measured_recall(store: Store, seed: int = 99) -> float:
    """recall@10 of the store's index (as loaded, with its recorded params) on fresh noisy queries."""
    ids, vecs = store.embeddings()
    rng = np.random.default_rng(seed)
    q = vecs[rng.choice(len(ids), 100, replace=False)] + rng.normal(0, 0.02, (100, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = ids[np.argsort(-(q @ vecs.T), axis=1)[:, :10]]
    found = store.load_index().search(q, 10)[1]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


@pytest.mark.parametrize("kind,param", [("hnsw", "efSearch"), ("ivf", "nprobe"), ("ivfpq", "nprobe")])
def test_approximate_index_records_recall_and_tuned_parameters(tmp_path, kind, param):
    path = tmp_path / "s"
    fill(path, 3000, seed=0)
    index_now(path, kind)
    store = Store.open(path)
    info = store.index_info
    assert info["type"] == kind and info["ntotal"] == 3000
    assert param in info["params"] and 0 < info["recall_at_10"] <= 1
    if kind != "ivfpq":  # PQ codes are lossy: the target is reached "when possible"
        assert info["recall_at_10"] >= 0.95
    assert abs(measured_recall(store) - info["recall_at_10"]) < 0.1  # the recorded figure is real


def test_ivf_grows_in_place_then_is_rebuilt_after_doubling(tmp_path):
    path = tmp_path / "s"
    fill(path, 2000, seed=0)
    first = index_now(path, "ivf")
    assert (first["how"], first["trained_on"]) == ("built", 2000)

    fill(path, 500, seed=1, start=2000)
    second = index_now(path)  # auto keeps the type asked for earlier
    assert second["type"] == "ivf" and second["how"] == "updated"
    assert second["trained_on"] == 2000 and second["nlist"] == first["nlist"] and second["ntotal"] == 2500
    store = Store.open(path)
    assert store.index_is_current()
    new_ids, new_vecs = next(store.iter_embeddings(batch_rows=100, start_id=2000))
    assert (store.load_index().search(new_vecs[:20].astype(np.float32), 1)[1][:, 0].tolist()
            == new_ids[:20].tolist())

    with StoreWriter(path) as w:
        w.delete(range(100))
    third = index_now(path)
    assert third["how"] == "updated" and third["ntotal"] == 2400
    found = Store.open(path).load_index().search(clustered(50, seed=0)[:50], 10)[1]
    assert not (set(found.ravel().tolist()) & set(range(100)))  # removed ids are never returned

    fill(path, 2000, seed=2, start=2500)
    fourth = index_now(path)
    assert fourth["how"] == "built" and fourth["trained_on"] == 4400 and fourth["ntotal"] == 4400
    assert fourth["recall_at_10"] >= 0.95


def test_hnsw_is_rebuilt_when_rows_are_removed(tmp_path):
    path = tmp_path / "s"
    fill(path, 1500, seed=0)
    index_now(path, "hnsw")
    with StoreWriter(path) as w:
        w.delete([3, 4, 5])
    record = index_now(path)
    assert record["type"] == "hnsw" and record["how"] == "built" and record["ntotal"] == 1497


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_index_opens_memory_mapped(tmp_path, kind):
    import faiss

    path = tmp_path / "s"
    fill(path, 2000, seed=0)
    index_now(path, kind)
    store = Store.open(path)
    index = store.load_index()
    maps = Path("/proc/self/maps").read_text()
    assert str(store.index_path()) in maps  # vectors/lists are read from the mapped file, not copied
    if kind == "flat":
        ids, vecs = store.embeddings()
        assert index.search(vecs[:5], 1)[1][:, 0].tolist() == ids[:5].tolist()
        return
    assert faiss.extract_index_ivf(index).nprobe == store.index_info["params"]["nprobe"]
    ids, vecs = store.embeddings()
    assert index.search(vecs[:5], 1)[1][:, 0].tolist() == ids[:5].tolist()


def test_unchanged_store_keeps_its_index_file(tmp_path):
    path = tmp_path / "s"
    fill(path, 300, seed=0)
    first = index_now(path)
    assert first["type"] == "flat" and first["recall_at_10"] == 1.0
    assert index_now(path)["file"] == first["file"]
