"""Approximate indexes keep the recall the manifest promises; readers see consistent snapshots
while a writer works."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_search import brute_force, clustered, hit_ids, make_store

from indexer.store import Store
from search import candidates as candidates_mod
from search.searcher import Searcher

ANN_DIM = 64
TOLERANCE = 0.02


@pytest.fixture(scope="module", params=["hnsw", "ivf", "ivfpq"])
def ann_store(request, tmp_path_factory) -> tuple[str, Path]:
    x = clustered(4000, dim=ANN_DIM, seed=2, clusters=100, spread=1.5)
    path = make_store(tmp_path_factory.mktemp("ann") / f"{request.param}.pixdex", x, kind=request.param,
                      shard_rows=1000)
    return request.param, path


def noisy_queries(store: Store, n: int, seed: int) -> np.ndarray:
    """Stored vectors plus a little noise: the query style the indexer tunes recall for."""
    rng = np.random.default_rng(seed)
    ids = store.ids()
    q = (store.vectors(rng.choice(ids, n, replace=False))
         + rng.normal(0, 0.02, (n, store.dim)).astype(np.float32))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.slow
def test_recall_at_10_meets_the_manifest(ann_store):
    kind, path = ann_store
    s = Searcher(path)
    assert s.index_type == kind
    promised = s.store.index_info["recall_at_10"]
    queries = noisy_queries(s.store, 150, seed=11)
    found = [hit_ids(h) for h in s.search_embedding(queries, k=10)]
    truth = [brute_force(s.store, q, 10)[0].tolist() for q in queries]
    assert recall(found, truth) >= promised - TOLERANCE
    assert all(len(f) == 10 for f in found)


@pytest.mark.slow
def test_filtered_ann_search_still_returns_k_matching_items(ann_store, monkeypatch):
    _, path = ann_store
    monkeypatch.setattr(candidates_mod, "EXACT_SUBSET", 0)  # force the FAISS id-selector path
    s = Searcher(path)
    promised = s.store.index_info["recall_at_10"]
    queries = noisy_queries(s.store, 40, seed=12)
    meta = s.store.metadata().to_pylist()
    for where, fn in [("path GLOB '*/cats/*'", lambda r: "/cats/" in r["path"]),
                      ("id >= 3960", lambda r: r["id"] >= 3960)]:  # 50% and 1% of the items
        allowed = np.array([r["id"] for r in meta if fn(r)])
        results = s.search_embedding(queries, k=10, where=where)
        assert all(len(h) == 10 and set(hit_ids(h)) <= set(allowed.tolist()) for h in results)
        truth = [brute_force(s.store, q, 10, allowed)[0].tolist() for q in queries]
        assert recall([hit_ids(h) for h in results], truth) >= promised - TOLERANCE


@pytest.mark.slow
def test_threshold_search_on_approximate_indexes(ann_store):
    _, path = ann_store
    s = Searcher(path)
    promised = s.store.index_info["recall_at_10"]
    found, truth = [], []
    for q in noisy_queries(s.store, 20, seed=13):
        hits = s.search_embedding(q, k=None, threshold=0.3)
        exact = brute_force(s.store, q, threshold=0.3)[0].tolist()
        assert all(h.score >= 0.3 for h in hits) and set(hit_ids(hits)) <= set(exact)
        found.append(hit_ids(hits))
        truth.append(exact)
    assert sum(map(len, truth)) > 500  # the threshold keeps a real range, not a handful
    assert recall(found, truth) >= promised - TOLERANCE


WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from indexer.store import StoreWriter
    from indexer.index_build import update_index
    from test_search import clustered, synthetic_rows
    path = {path!r}
    for session in range(6):
        with StoreWriter(path) as w:
            for step in range(4):
                start = w.manifest["next_id"]
                w.append(synthetic_rows(150, start), clustered(150, seed=1000 + start))
                w.commit()
                if step % 2:
                    w.delete(range(start, start + 5))
                    update_index(w, "flat", log=lambda m: None)
                    w.commit()
    open(path + ".done", "w").close()
""")


@pytest.mark.slow
def test_readers_see_the_last_committed_snapshot_while_a_writer_appends(tmp_path):
    path = make_store(tmp_path / "live.pixdex", clustered(600, seed=0), kind="flat", shard_rows=200)
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent),
                                                                   path=str(path))])
    q = clustered(1, seed=99)[0]
    seen, reads = set(), 0
    try:
        deadline = time.time() + 120
        while writer.poll() is None and time.time() < deadline:
            s = Searcher(path)
            store = s.store
            reads += 1
            seen.add(store.manifest["generation"])
            ids = store.ids()
            assert store.count == len(ids) == store.metadata().num_rows
            assert sum(len(b) for b, _ in store.iter_embeddings()) == store.count
            hits = s.search_embedding(q, k=10)
            want_ids, want_scores = brute_force(store, q, 10)
            assert hit_ids(hits) == want_ids.tolist()
            np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-6)
            assert [h.path for h in hits] == store.paths(want_ids)
        assert writer.wait(timeout=120) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert Path(str(path) + ".done").exists()
    assert reads >= 5 and len(seen) >= 3  # the reader really overlapped with several commits
    final = Searcher(path)
    assert final.count == 600 + 6 * 4 * 150 - 6 * 2 * 5
    assert hit_ids(final.search_embedding(q, k=10)) == brute_force(final.store, q, 10)[0].tolist()
    shutil.rmtree(path)
