"""Candidate generation: which stored items a query may return (filter scopes) and which to rescore.

Candidates come from the FAISS index with the manifest's nprobe/efSearch, widened under filters (an id
selector) and deepened until k eligible items are found, with exact search as the fallback: over a small
filtered subset, over rows added after the index was built, and when deepening runs out.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.arrow_values import id_array
from indexer.faiss_index import exact_search, index_family, ivf_of, rescore_depth
from indexer.store import Store
from search.filters import parse_filter, path_mask
from search.hits import rescore

EXACT_SUBSET = 20_000  # a filtered subset this small is searched exactly: a few ms, perfect recall
MAX_BOOST = 64  # deepening multiplies nprobe / efSearch up to this factor, then falls back to exact
RANGE_SLACK = {"ivfpq": 0.1}  # cosine margin for approximate (PQ) distances in range search
RANGE_BOOST = 4  # a range reaches further than the top 10 the index was tuned for: probe wider
MAX_EF = 16384
BATCH_ROWS = 65536


@dataclass
class Scope:
    """Which live ids a search may return, and how to restrict the index to them."""

    n: int  # how many items are eligible
    ids: np.ndarray | None  # sorted eligible ids; None = every live item
    selector: Any = None  # faiss IDSelector over indexed eligible ids (None = no restriction)
    tail: np.ndarray | None = None  # eligible ids the index does not hold yet (searched exactly)
    exact: bool = False  # search the eligible ids exactly instead of through the index
    keep: Any = None  # arrays the selector points into (kept alive while it is used)
    fraction: float = 1.0  # eligible share of the indexed items: the index search widens by 1/fraction


class Candidates:
    """Candidate search over one store snapshot and its FAISS index (None: every search is exact)."""

    def __init__(self, store: Store, index=None):
        self.store = store
        self.index = index if index is not None and index.ntotal > 0 else None
        info = store.index_info
        self.index_type = index_family(info.get("type")) if self.index is not None else None
        self.indexed_max = int(info.get("max_id", -1)) if self.index is not None else -1
        self.stale = self.index is not None and not store.index_is_current()
        self.params = dict(info.get("params") or {})

    def make_scope(self, where: str | None = None, path_glob: str | None = None,
                   path_prefix: str | None = None) -> Scope:
        """The eligible items for these filters, and how the index is restricted to them."""
        store = self.store
        ids = None
        if where or path_glob or path_prefix:
            flt = parse_filter(where) if where else None  # syntax errors before reading metadata
            meta = store.metadata()
            keep = np.ones(meta.num_rows, dtype=bool)
            if flt is not None:
                keep &= flt.mask(meta)
            if path_glob or path_prefix:
                keep &= path_mask(meta["path"], path_glob, path_prefix)
            ids = np.sort(id_array(meta["id"])[keep])
        n = store.count if ids is None else len(ids)
        if self.index is None:
            return Scope(n, ids, exact=True)
        if ids is not None and (n <= EXACT_SUBSET or (self.index_type == "flat" and 4 * n < store.count)):
            return Scope(n, ids, exact=True)
        live = store.ids() if (ids is None and self.stale) else ids
        tail = None
        if self.stale:
            all_live = store.ids() if live is None else live
            tail = all_live[all_live > self.indexed_max]
        if ids is None and not self.stale:
            return Scope(n, None)
        indexed = live[live <= self.indexed_max]
        selector, keep = bitmap_selector(indexed, self.indexed_max + 1)
        fraction = max(len(indexed), 1) / max(int(self.index.ntotal), 1)
        return Scope(n, ids, selector, tail if tail is not None and len(tail) else None, keep=keep,
                     fraction=min(1.0, fraction))

    def search(self, Q: np.ndarray, k: int | None, threshold: float | None, scope: Scope | None = None,
               dedup: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, exact cosine scores) per query row of Q, best first, ties by id."""
        scope = scope or self.make_scope()
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        if scope.n == 0:
            return [(np.zeros(0, np.int64), np.zeros(0)) for _ in Q]
        if k is None:
            cands = self.range_candidates(Q, threshold, scope)
            return [rescore(self.store, Q[i], c, threshold, dedup, None)[:2] for i, c in enumerate(cands)]
        want = min(k, scope.n)
        depth = min(scope.n, self.first_depth(k, dedup))
        boost = 1
        results: list = [None] * len(Q)
        pending = list(range(len(Q)))
        while pending:
            exact = scope.exact or depth >= scope.n or boost > MAX_BOOST
            sub = Q[pending]
            cands = self.exact(sub, depth, scope.ids) if exact else self.knn(sub, depth, scope, boost)
            still = []
            for j, qi in enumerate(pending):
                ids, scores, lowest = rescore(self.store, Q[qi], cands[j], threshold, dedup, k)
                complete = exact and depth >= scope.n
                beyond = threshold is not None and lowest < threshold
                if len(ids) >= want or complete or beyond:
                    results[qi] = (ids, scores)
                else:
                    still.append(qi)
            pending = still
            depth = min(scope.n, depth * 4)
            boost *= 4
        return results

    def first_depth(self, k: int, dedup: float | None) -> int:
        """Candidates fetched per query: a margin over k (ties, dedup), more for PQ's coarse scores."""
        depth = 2 * k + 10
        if self.index_type == "ivfpq":
            depth = max(depth, rescore_depth(k))  # the depth the indexer tuned nprobe for
        if dedup is not None:
            depth *= 2
        return depth

    def search_params(self, scope: Scope, depth: int, boost: float, probes: int | None = None):
        """FAISS search parameters: the manifest's nprobe/efSearch, widened for filters and deepening.

        A filter keeping a fraction f of the items widens the search by 1/f, so about as many eligible
        vectors are visited as an unfiltered search would visit.
        """
        import faiss

        kind, selector = self.index_type, scope.selector
        widen = boost / max(scope.fraction, 1e-6)
        if kind == "hnsw":
            ef = max(math.ceil(int(self.params.get("efSearch", 16)) * widen), depth)
            return faiss.SearchParametersHNSW(sel=selector, efSearch=min(ef, MAX_EF))
        if kind in ("ivf", "ivfpq"):
            nlist = int(self.store.index_info.get("nlist") or ivf_of(self.index).nlist)
            nprobe = min(nlist, probes or math.ceil(int(self.params.get("nprobe", 1)) * widen))
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def knn(self, Q: np.ndarray, depth: int, scope: Scope, boost: int,
            probes: int | None = None) -> list[np.ndarray]:
        """Candidate ids per query from the index (plus exact candidates among not-yet-indexed ids)."""
        params = self.search_params(scope, depth, boost, probes)
        with faiss_threads(len(Q)):
            _, labels = self.index.search(Q, depth, params=params)
        cands = [row[row >= 0] for row in labels]
        if scope.tail is not None:
            extra = self.exact(Q, min(depth, len(scope.tail)), scope.tail)
            cands = [np.concatenate([a, b]) for a, b in zip(cands, extra)]
        return cands

    def neighbours(self, Q: np.ndarray, depth: int, probes: int | None = None
                             ) -> tuple[np.ndarray, np.ndarray, float]:
        """Approximate top-`depth` neighbours of each query row over every live item, for bulk tools (the
        duplicate finder) that rescore only the few pairs that matter: (ids [nq, m], scores [nq, m], slack).

        ids are -1 where there are fewer; scores are the index's (exact for flat, IVF-Flat and HNSW; PQ ones
        may be off by up to `slack`). probes: IVF lists to visit instead of the tuned nprobe.
        """
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        scope = self.make_scope()
        depth = max(1, min(depth, scope.n))
        if scope.n == 0:
            return np.full((len(Q), 1), -1, np.int64), np.full((len(Q), 1), -np.inf, np.float32), 0.0
        if scope.exact:
            ids, scores = self.exact_scored(Q, depth, scope.ids)
            return ids, scores, 1e-4
        params = self.search_params(scope, depth, 1, probes)
        with faiss_threads(len(Q)):
            scores, ids = self.index.search(Q, depth, params=params)
        if scope.tail is not None:
            t_ids, t_scores = self.exact_scored(Q, min(depth, len(scope.tail)), scope.tail)
            ids, scores = np.hstack([ids, t_ids]), np.hstack([scores, t_scores])
        return ids, scores, RANGE_SLACK.get(self.index_type, 1e-3)

    def exact_scored(self, Q: np.ndarray, depth: int,
                     ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-`depth` (ids, scores) per query over the given ids (or all live items), -1 padded."""
        scores, found = exact_search(self.blocks(ids), Q, depth)
        return found, scores.astype(np.float32)

    def range_candidates(self, Q: np.ndarray, threshold: float, scope: Scope) -> list[np.ndarray]:
        """Candidate ids per query scoring about >= threshold (FAISS range search or deepening)."""
        slack = RANGE_SLACK.get(self.index_type, 1e-4)
        if scope.exact:
            return self.exact_range(Q, threshold - 1e-4, scope.ids)
        if self.index_type in ("flat", "ivf", "ivfpq"):
            params = self.search_params(scope, 0, RANGE_BOOST)
            with faiss_threads(len(Q)):
                lims, _, labels = self.index.range_search(Q, float(threshold - slack), params=params)
            cands = [labels[lims[i]:lims[i + 1]] for i in range(len(Q))]
        else:  # HNSW: no reliable range search; deepen a k-NN search until it passes the threshold
            cands = []
            for q in Q:
                depth = 256
                while True:
                    if depth >= scope.n // 4:
                        cands.append(self.exact_range(q[None], threshold - 1e-4, scope.ids)[0])
                        break
                    params = self.search_params(scope, depth, 1)
                    with faiss_threads(1):
                        dist, labels = self.index.search(q[None], depth, params=params)
                    got = labels[0] >= 0
                    if got.sum() < depth or dist[0][got].min() < threshold - slack:
                        cands.append(labels[0][got])
                        break
                    depth *= 4
        if scope.tail is not None:
            extra = self.exact_range(Q, threshold - 1e-4, scope.tail)
            cands = [np.concatenate([a, b]) for a, b in zip(cands, extra)]
        return cands

    def blocks(self, ids: np.ndarray | None):
        """(ids, float32 vectors) blocks over the given ids, or over every live item."""
        if ids is None:
            for block_ids, emb in self.store.iter_embeddings(BATCH_ROWS):
                yield block_ids, emb.astype(np.float32)
            return
        for start in range(0, len(ids), BATCH_ROWS):
            chunk = ids[start:start + BATCH_ROWS]
            yield chunk, self.store.vectors(chunk)

    def exact(self, Q: np.ndarray, depth: int, ids: np.ndarray | None) -> list[np.ndarray]:
        """Exact top-`depth` candidate ids per query over the given ids (or all live items)."""
        _, found = exact_search(self.blocks(ids), Q, depth)
        return [row[row >= 0] for row in found]

    def exact_range(self, Q: np.ndarray, radius: float, ids: np.ndarray | None) -> list[np.ndarray]:
        found = [[] for _ in Q]
        for block_ids, vecs in self.blocks(ids):
            scores = Q @ vecs.T
            for i in range(len(Q)):
                found[i].append(block_ids[scores[i] >= radius])
        return [np.concatenate(f) if f else np.zeros(0, np.int64) for f in found]


@contextmanager
def faiss_threads(n_queries: int):
    """FAISS parallelises over queries: for a few queries extra OpenMP threads only spin (and on a
    busy machine they cost 10x), so use at most one thread per query, then restore the setting."""
    import faiss

    before = faiss.omp_get_max_threads()
    want = max(1, min(before, n_queries))
    if want != before:
        faiss.omp_set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            faiss.omp_set_num_threads(before)


def bitmap_selector(ids: np.ndarray, size: int):
    """A faiss IDSelectorBitmap over ids in [0, size) (returns the selector and its backing array)."""
    import faiss

    mask = np.zeros(max(size, 1), dtype=bool)
    mask[ids] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits
