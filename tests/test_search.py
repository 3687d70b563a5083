"""Searcher correctness: flat results equal brute force (ties by id), filters, thresholds, dedup, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from indexer.encoder import ModelInfo
from indexer.errors import ModelMismatchError, PixdexError
from indexer.index_build import update_index
from indexer.store import Store, StoreWriter
from search import candidates as candidates_mod
from search.query import parse_query
from search.searcher import Searcher

DIM = 32


# ---- synthetic stores (also used by the other test_search_* files) ---------------------------------
def clustered(n: int, dim: int = DIM, seed: int = 0, clusters: int = 20, spread: float = 0.6) -> np.ndarray:
    """Unit vectors drawn from a Gaussian mixture: clumpy like real embeddings, not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_rows(n: int, start: int = 0) -> list[dict]:
    return [{"path": f"/photos/{'cats' if i % 2 else 'dogs'}/{i:05d}.{'png' if i % 3 == 0 else 'jpg'}",
             "bytes": 1000 + i, "mtime": 0.0, "width": 64 + (i % 10) * 32, "height": 64,
             "sha256": f"{i:064x}"}
            for i in range(start, start + n)]


def make_store(path: Path, vectors: np.ndarray, kind: str | None = "flat", shard_rows: int = 500,
               model: ModelInfo | None = None) -> Path:
    """A store written directly (no images encoded); kind=None leaves it without an index."""
    model = model or ModelInfo("synthetic", "clip", vectors.shape[1], "0123456789abcdef", "clip")
    with StoreWriter(path, model, shard_rows=shard_rows) as w:
        if len(vectors):
            w.append(synthetic_rows(len(vectors)), vectors)
        w.commit()
        if kind is not None:
            update_index(w, kind, log=lambda m: None)
    return path


def brute_force(store: Store, q: np.ndarray, k: int | None = None, allowed: np.ndarray | None = None,
                threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ranking with numpy over the stored embeddings: score desc, then id asc."""
    ids, emb = store.embeddings()
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, emb = ids[keep], emb[keep]
    scores = emb.astype(np.float64) @ (q / np.linalg.norm(q)).astype(np.float32).astype(np.float64)
    order = np.lexsort((ids, -scores))
    ids, scores = ids[order], scores[order]
    if threshold is not None:
        ids, scores = ids[scores >= threshold], scores[scores >= threshold]
    return (ids, scores) if k is None else (ids[:k], scores[:k])


def hit_ids(hits) -> list[int]:
    return [h.id for h in hits]


@pytest.fixture(scope="module")
def flat_store(tmp_path_factory) -> Path:
    """1200 clustered vectors in 3 shards, with exact duplicates (ties) and removed rows."""
    x = clustered(1200, seed=1)
    x[700] = x[100]  # exact ties: same score for ids 100, 700, 1100
    x[1100] = x[100]
    path = make_store(tmp_path_factory.mktemp("search") / "flat.pixdex", x)
    with StoreWriter(path) as w:
        w.delete([5, 6, 900])
        update_index(w, "flat", log=lambda m: None)
    return path


# ---- exactness ---------------------------------------------------------------------------------------
def test_flat_results_equal_brute_force_with_ties_by_id(flat_store):
    s = Searcher(flat_store)
    store = Store.open(flat_store)
    rng = np.random.default_rng(3)
    queries = np.concatenate([clustered(6, seed=9),
                              store.vectors([100, 42]) + 0.01 * rng.normal(size=(2, DIM))])
    results = s.search_embedding(queries, k=25)
    for q, hits in zip(queries, results):
        ids, scores = brute_force(store, q, 25)
        assert hit_ids(hits) == ids.tolist()
        np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-6)
        assert [h.rank for h in hits] == list(range(1, 26))
        assert not {5, 6, 900} & set(hit_ids(hits))
    tie = s.search_embedding(store.vectors([100])[0], k=3)
    assert hit_ids(tie) == [100, 700, 1100]  # equal scores: lower id first
    assert tie[0].score == tie[1].score == tie[2].score


def test_paths_and_metadata_of_hits(flat_store):
    hit = Searcher(flat_store).search("id:43", k=1)[0]
    assert hit.id == 43 and hit.path == "/photos/cats/00043.jpg" and hit.score == pytest.approx(1.0, abs=1e-3)
    assert hit.metadata["width"] == 64 + 3 * 32 and hit["bytes"] == 1043
    assert hit.to_dict() == {"rank": 1, "id": 43, "path": "/photos/cats/00043.jpg", "score": hit.score}


def test_batch_equals_one_by_one_and_uses_one_index_call(flat_store):
    s = Searcher(flat_store)
    qs = ["id:1", "id:2 - 0.5:id:3", "3:id:10 + id:11"]
    singles = [hit_ids(s.search(q, k=7)) for q in qs]
    calls = []
    real = s.candidates.index

    class Spy:
        ntotal = real.ntotal

        def search(self, *a, **kw):
            calls.append(len(a[0]))
            return real.search(*a, **kw)

    s.candidates.index = Spy()
    assert [hit_ids(h) for h in s.search(qs, k=7)] == singles
    assert calls == [3]


def test_k_larger_than_the_store_returns_everything(flat_store):
    s = Searcher(flat_store)
    hits = s.search("id:7", k=5000)
    assert len(hits) == s.count == 1197
    assert hit_ids(hits) == brute_force(s.store, s.store.vectors([7])[0])[0].tolist()


def test_mixes_are_normalised_weighted_sums(flat_store):
    s = Searcher(flat_store)
    v = s.store.vectors([1, 2, 3]).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    want = 2 * v[0] + v[1] - 0.5 * v[2]
    got = s.encode([parse_query("2:id:1 + id:2 - 0.5:id:3")])[0]
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-6)
    hits = s.search("2:id:1 + id:2 - 0.5:id:3", k=10)
    assert hit_ids(hits) == brute_force(s.store, want.astype(np.float32), 10)[0].tolist()
    with pytest.raises(PixdexError, match="cancels out"):
        s.search("id:1 - id:1")


def test_more_like_leaves_the_item_out(flat_store):
    s = Searcher(flat_store)
    by_id = s.more_like(100, k=5)
    assert 100 not in hit_ids(by_id) and len(by_id) == 5 and hit_ids(by_id)[:2] == [700, 1100]
    assert [h.rank for h in by_id] == [1, 2, 3, 4, 5]
    assert hit_ids(s.more_like("/photos/dogs/00100.jpg", k=5)) == hit_ids(by_id)
    with pytest.raises(PixdexError, match="not in store"):
        s.more_like("/nowhere.jpg")


# ---- filters, thresholds, dedup ------------------------------------------------------------------
def allowed_ids(store: Store, mask_fn) -> np.ndarray:
    meta = store.metadata().to_pylist()
    return np.array([r["id"] for r in meta if mask_fn(r)], np.int64)


@pytest.mark.parametrize("force_selector", [False, True])
def test_filters_return_k_matching_items_exactly(flat_store, monkeypatch, force_selector):
    if force_selector:  # the FAISS id-selector path (normally for large subsets)
        monkeypatch.setattr(candidates_mod, "EXACT_SUBSET", 0)
    s = Searcher(flat_store)
    q = clustered(1, seed=21)[0]
    cases = [
        ("width >= 320 AND path GLOB '*.png'", None, None,
         lambda r: r["width"] >= 320 and r["path"].endswith(".png")),
        (None, "*/cats/*", None, lambda r: "/cats/" in r["path"]),
        ("id < 30", None, "/photos/dogs/", lambda r: r["id"] < 30 and "/dogs/" in r["path"]),
    ]
    for where, glob, prefix, fn in cases:
        allowed = allowed_ids(s.store, fn)
        hits = s.search_embedding(q, k=12, where=where, path_glob=glob, path_prefix=prefix)
        want = brute_force(s.store, q, 12, allowed)[0]
        assert len(want) == min(12, len(allowed))
        assert hit_ids(hits) == want.tolist()


def test_filter_on_a_saved_tag_column(flat_store, tmp_path):
    path = shutil.copytree(flat_store, tmp_path / "tagged.pixdex")
    ids = Store.open(path).ids()
    shapes = np.array(["circle", "square", "star"])[ids % 3]
    with StoreWriter(path) as w:
        w.write_tags("shape", pa.table({"id": ids, "shape": shapes, "shape_score": (ids % 7) / 7.0}))
    s = Searcher(path)
    q = clustered(1, seed=5)[0]
    hits = s.search_embedding(q, k=20, where="shape = 'circle' AND shape_score > 0.5")
    allowed = ids[(shapes == "circle") & ((ids % 7) / 7.0 > 0.5)]
    assert hit_ids(hits) == brute_force(s.store, q, 20, allowed)[0].tolist()
    assert all(h["shape"] == "circle" for h in hits)
    with pytest.raises(PixdexError, match="unknown column 'colour'.*available: .*shape, shape_score"):
        s.search_embedding(q, where="colour = 'red'")


def test_filter_that_matches_nothing_gives_no_results(flat_store):
    assert Searcher(flat_store).search("id:1", where="width > 100000") == []


def test_threshold_returns_everything_above_it(flat_store):
    s = Searcher(flat_store)
    q = s.store.vectors([10])[0]
    hits = s.search_embedding(q, k=None, threshold=0.6)
    ids, _ = brute_force(s.store, q, threshold=0.6)
    assert len(ids) > 12 and hit_ids(hits) == ids.tolist()
    assert min(h.score for h in hits) >= 0.6
    top = s.search_embedding(q, k=5, threshold=0.6)
    assert hit_ids(top) == ids[:5].tolist()
    filtered = s.search_embedding(q, k=None, threshold=0.6, path_glob="*.png")
    assert hit_ids(filtered) == [i for i in ids.tolist() if i % 3 == 0]


def test_dedup_drops_near_identical_results_and_still_returns_k(tmp_path):
    base = clustered(300, seed=4)
    rng = np.random.default_rng(0)
    dupes = base[:100] + 0.002 * rng.normal(size=(100, DIM)).astype(np.float32)  # near-copies of 0..99
    x = np.concatenate([base, dupes / np.linalg.norm(dupes, axis=1, keepdims=True)])
    s = Searcher(make_store(tmp_path / "dup.pixdex", x))
    q = base[3]
    plain = s.search_embedding(q, k=10)
    assert {3, 303} <= set(hit_ids(plain))
    hits = s.search_embedding(q, k=10, dedup=0.99)
    assert len(hits) == 10
    vecs = s.store.vectors(hit_ids(hits)).astype(np.float64)
    sims = vecs @ vecs.T
    assert (sims[~np.eye(10, dtype=bool)] < 0.99).all()
    ranked = brute_force(s.store, q)[0]  # greedy over the exact ranking
    kept = []
    for i in ranked:
        v = s.store.vectors([i])[0]
        if all(float(v @ s.store.vectors([j])[0]) < 0.99 for j in kept):
            kept.append(int(i))
        if len(kept) == 10:
            break
    assert hit_ids(hits) == kept


# ---- stores that are changing or unusual -------------------------------------------------------------
def test_rows_added_and_removed_after_the_index_are_still_searched_exactly(flat_store, tmp_path):
    path = shutil.copytree(flat_store, tmp_path / "stale.pixdex")
    extra = clustered(300, seed=77)
    with StoreWriter(path) as w:  # committed rows the index does not hold yet, and more removals
        w.append(synthetic_rows(300, start=1200), extra)
        w.delete([100, 11])
        w.commit()
    s = Searcher(path)
    assert not s.store.index_is_current()
    for q in (extra[5], s.store.vectors([700])[0], clustered(1, seed=3)[0]):
        hits = s.search_embedding(q, k=15)
        assert hit_ids(hits) == brute_force(s.store, q, 15)[0].tolist()
        assert not {100, 11} & set(hit_ids(hits))
    assert hit_ids(s.search_embedding(extra[5], k=None, threshold=0.7)) == \
        brute_force(s.store, extra[5], threshold=0.7)[0].tolist()


def test_a_long_lived_searcher_survives_writers_sweeping_its_snapshot(flat_store, tmp_path):
    path = shutil.copytree(flat_store, tmp_path / "swept.pixdex")
    ids = Store.open(path).ids()

    def tag(version: int) -> None:
        with StoreWriter(path) as w:
            w.write_tags("t", pa.table({"id": ids, "t": np.where(ids % 2 == version % 2, "yes", "no")}))

    tag(1)
    s = Searcher(path)
    old = path / s.store.manifest["tags"]["t"]
    tag(2)
    tag(3)
    assert not old.exists()  # two writer sessions later, the snapshot's tag table is gone
    hits = s.search("id:1", k=10, where="t = 'yes'")
    assert len(hits) == 10 and all(h.id % 2 == 1 for h in hits)  # answered from the latest commit


def test_store_without_index_is_searched_exactly(tmp_path):
    x = clustered(400, seed=8)
    s = Searcher(make_store(tmp_path / "noindex.pixdex", x, kind=None))
    assert hit_ids(s.search_embedding(x[0], k=5)) == brute_force(s.store, x[0], 5)[0].tolist()


def test_empty_store_gives_empty_results(tmp_path):
    s = Searcher(make_store(tmp_path / "empty.pixdex", np.zeros((0, DIM), np.float32)))
    assert s.count == 0
    assert s.search_embedding(np.ones(DIM), k=10) == []
    assert s.search_embedding(np.ones((2, DIM)), k=None, threshold=0.1) == [[], []]


def test_bad_inputs_are_clear_errors(flat_store):
    s = Searcher(flat_store)
    cases = [
        (lambda: s.search(""), "empty query"),
        (lambda: s.search([]), "no queries given"),
        (lambda: s.search_text("  "), "empty query text"),
        (lambda: s.search("id:99999"), "unknown id 99999"),
        (lambda: s.search("id:5"), "unknown id 5"),  # removed
        (lambda: s.search("id:1", k=0), "k must be a whole number from 1"),
        (lambda: s.search("id:1", k=None), "give k"),
        (lambda: s.search("id:1", threshold=1.5), "threshold must be a number from -1 to 1"),
        (lambda: s.search("id:1", dedup=0), "dedup must be a number above 0"),
        (lambda: s.search_embedding(np.ones(DIM + 1)), f"the store's model gives {DIM}"),
        (lambda: s.search("id:1", where="width >"), "col 8"),
        (lambda: s.search("id:1", template="no braces"), None),  # templates only apply to text
    ]
    for call, message in cases:
        if message is None:
            call()
            continue
        with pytest.raises(PixdexError, match=message):
            call()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(PixdexError, match="does not exist"):
        Searcher(tmp_path / "nope")


# ---- a real (random-weight) model -----------------------------------------------------------------
def test_text_and_image_queries_match_brute_force_with_the_stores_model(tiny_store, tiny_clip, shapes_dir):
    from indexer.encoder import get_encoder

    s = Searcher(tiny_store)
    enc = get_encoder(tiny_clip)
    image = min(shapes_dir.glob("*.png"))
    np.testing.assert_allclose(s.encode([parse_query("a red circle")])[0],
                               enc.encode_texts(["a red circle"])[0], atol=1e-6)
    np.testing.assert_allclose(s.encode([parse_query("red circle")], template="a photo of a {}")[0],
                               enc.encode_texts(["a photo of a red circle"])[0], atol=1e-6)
    queries = ["a red circle", str(image), f'"2:a blue star" - "{image}"']
    results = s.search(queries, k=8)
    vectors = s.encode([parse_query(q) for q in queries])
    for q, hits in zip(vectors, results):
        assert hit_ids(hits) == brute_force(s.store, q, 8)[0].tolist()
    assert results[1][0].path == str(image.resolve())  # an indexed image finds itself first
    assert hit_ids(s.search_image(image, k=8)) == hit_ids(results[1])
    assert hit_ids(s.search_text("a red circle", k=8)) == hit_ids(results[0])
    with pytest.raises(PixdexError, match="needs \\{\\}"):
        s.search("cat", template="a photo")


def test_a_store_refuses_another_model(tiny_store, tmp_path):
    from models import save_random_clip

    other = save_random_clip(tmp_path / "other-clip", seed=1)
    with pytest.raises(ModelMismatchError, match="was built with model"):
        Searcher(tiny_store, model=str(other))
