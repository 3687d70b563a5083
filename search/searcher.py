"""Searcher: encode queries with the store's model and rank stored images by cosine similarity.

Every result's score is the exact cosine between the query and the stored (float16) embedding, and
results are ordered by (-score, id); the FAISS index only proposes candidates. So on a flat index the
answer equals brute force, and on approximate indexes only recall can differ. Filters restrict the
index search itself (a FAISS id selector, or exact search over the matching subset when it is small),
and the search deepens until k matching items are found or none are left.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.errors import InvalidType, InvalidValue, PixdexError, StoreDamaged
from indexer.faiss_index import index_family, ivf_of, rescore_depth
from indexer.ids import check_id, describe
from indexer.image_onnx import load_image_encoder
from indexer.inputs import check_image_file, image_file_of
from indexer.onnx_cache import CANNOT
from indexer.params import COSINE, DEDUP, K
from indexer.remote_store import open_path
from indexer.store import Store, id_array
from indexer.text_onnx import load_text_encoder
from search.filters import parse_filter, path_mask
from search.ordering import Order, check_columns, column_values, order_hits, parse_sort
from search.query import Query, Term, as_query

EXACT_SUBSET = 20_000  # a filtered subset this small is searched exactly: a few ms, perfect recall
MAX_BOOST = 64  # deepening multiplies nprobe / efSearch up to this factor, then falls back to exact
RANGE_SLACK = {"ivfpq": 0.1}  # cosine margin for approximate (PQ) distances in range search
RANGE_BOOST = 4  # a range reaches further than the top 10 the index was tuned for: probe wider
MAX_EF = 16384
SMALL_BATCH = 8  # up to this many queries are encoded on one torch thread
BATCH_ROWS = 65536


@dataclass
class Hit:
    """One result: 1-based rank, store id, path and cosine score; `metadata` has every stored column."""

    rank: int
    id: int
    path: str
    score: float
    values: dict = field(default_factory=dict, compare=False, repr=False)  # requested metadata columns

    @property
    def metadata(self) -> dict:
        """All metadata columns of this item (base, source and tag columns)."""
        if getattr(self, "_searcher", None) is None:
            raise PixdexError("this hit is not attached to a store")
        return self._searcher.store.item(self.id)

    def __getitem__(self, column: str):
        return self.metadata[column]

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "path": self.path, "score": self.score, **self.values}


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


def _is_batch(queries: Any) -> bool:
    if isinstance(queries, np.ndarray):
        return queries.ndim == 2
    return isinstance(queries, (list, tuple))


class Searcher:
    """Search one store snapshot with text, images, stored items, embeddings or mixes of them.

    `model` defaults to the store's own model and is loaded on the first query that needs it;
    a different model is refused (ModelMismatchError). Id and embedding queries need no model.
    """

    def __init__(self, store: str | os.PathLike | Store, model: Any = None, device: str = "auto"):
        if not isinstance(store, Store):
            store = open_path(store)  # a remote store (s3://, ...) is pulled to its local copy
        self.path = Path(store.path if isinstance(store, Store) else store).expanduser()
        self.device = device
        self._model = model
        self._encoder = None
        self._fast: dict[str, Any] = {}  # tower -> ONNX encoder or None (looked up on first use)
        self._fast_missing: dict[str, str] = {}  # tower -> why it has no fast path (said once)
        self._open(store if isinstance(store, Store) else None)
        if model is not None:
            self.encoder  # noqa: B018 - load and check the model now, not at the first query
        self.last_timings: dict[str, float] = {}

    # ---- the snapshot -----------------------------------------------------------------------
    def _open(self, snapshot: Store | None = None) -> None:
        """Open the last committed manifest and its index; retry if a writer swept files meanwhile."""
        for attempt in range(5):
            store = snapshot if snapshot is not None else Store.open(self.path)
            snapshot = None
            index = None
            if store.index_info.get("file"):
                try:
                    index = store.load_index()
                except (RuntimeError, OSError, StoreDamaged):
                    if store.index_path().exists() or attempt == 4:
                        raise
                    continue  # a newer commit replaced this index: read the manifest again
            break
        self.store = store
        self._index = index if index is not None and index.ntotal > 0 else None
        info = store.index_info
        self.index_type = index_family(info.get("type")) if self._index is not None else None
        self._indexed_max = int(info.get("max_id", -1)) if self._index is not None else -1
        self._stale = self._index is not None and not store.index_is_current()
        self._params = dict(info.get("params") or {})
        self._path_cache: dict[int, pa.Array] = {}
        self._scope_cache: dict[tuple, Scope] = {}
        self._path_ids: dict[str, int] | None = None

    def reopened(self) -> Searcher:
        """A new Searcher on the store's latest committed state, sharing this one's models (nothing is
        reloaded). Unlike refresh(), this one is left as it was: a server swaps whole snapshots."""
        fresh = copy.copy(self)
        fresh._open()
        fresh.last_timings = {}
        if fresh._encoder is not None:
            fresh.store.check_model(fresh._encoder.info)
        return fresh

    def refresh(self) -> None:
        """Switch to the store's latest committed state (for long-lived searchers)."""
        self._open()
        if self._encoder is not None:
            self.store.check_model(self._encoder.info)

    @property
    def count(self) -> int:
        return self.store.count

    @property
    def encoder(self):
        """The store's model (loaded once per process), checked against the store's fingerprint."""
        if self._encoder is None:
            from indexer.encoder import store_encoder  # torch: only when a query needs the model

            self._encoder = store_encoder(self.store, self._model, self.device)
        return self._encoder

    def fast_encoder(self, tower: str):
        """The ONNX query path (indexer.text_onnx / image_onnx, no torch) of the store's own model for
        "text" or "image", or None: then that tower runs on transformers and a notice says why."""
        if tower not in self._fast:
            self._fast[tower] = None
            if self._model is None:
                load = load_text_encoder if tower == "text" else load_image_encoder
                fast, why = load(str(self.store.model.get("fingerprint", "")))
                if fast is not None and fast.dim == self.store.dim:
                    self._fast[tower] = fast
                else:
                    self._fast_missing[tower] = why or "export has another dimension"
        return self._fast[tower]

    @property
    def text_encoder(self):
        """The fast text path, or None (see fast_encoder)."""
        return self.fast_encoder("text")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Text query vectors: the fast path when the store's model has a checked export, else transformers."""
        fast = self.fast_encoder("text")
        if fast is not None and fast.can_encode(texts):
            return fast.encode_texts(texts)
        with _torch_threads(len(texts)):
            out = self.encoder.encode_texts(texts)
        self._notice("text")
        return out

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """Image query vectors: the fast path when the store's model has a checked export, else transformers."""
        fast = self.fast_encoder("image")
        if fast is not None:
            return fast.encode_images(images)
        with _torch_threads(len(images)):
            out = self.encoder.encode_images(images)
        self._notice("image")
        return out

    def _notice(self, tower: str) -> None:
        """Once per searcher: one line on why a tower ran on transformers; a missing text export is written
        now (seconds) so the next process starts fast; image exports are left to `pixdex index` (minutes)."""
        why = self._fast_missing.pop(tower, "")
        if not why:
            return
        log = logging.getLogger("pixdex.search")
        if tower == "image" or CANNOT in why or "PIXDEX_FAST" in why or "not installed" in why:
            hint = "; `pixdex index` writes it" if tower == "image" and "no fast" in why else ""
            log.warning("pixdex: %s queries ran on transformers: %s%s", tower, why, hint)
            return
        from indexer.onnx_export import ensure_export

        log.warning("pixdex: text queries ran on transformers (%s); writing the text export for next time", why)
        try:
            ensure_export(self.encoder, "text")
        except Exception as exc:  # noqa: BLE001 - the query has its answer; the export is only an offer
            log.warning("pixdex: could not write the fast text export: %s", str(exc).splitlines()[0][:200])

    # ---- public queries ---------------------------------------------------------------------
    def search(self, queries: Any, k: int | None = 10, threshold: float | None = None, where: str | None = None,
               path_glob: str | None = None, path_prefix: str | None = None, dedup: float | None = None,
               template: str | None = None, sort: str | None = None,
               columns: Sequence[str] | None = None) -> list[Hit] | list[list[Hit]]:
        """Rank stored items for one query (-> list[Hit]) or a list of queries (-> list[list[Hit]]).

        A query is a string in the query syntax (text, image path/URL, id:N, like:PATH, weighted
        +/- mixes), a Query, a PIL image, bytes, a Path or a 1-d embedding. k=None with a threshold
        returns everything scoring >= threshold. where/path_glob/path_prefix restrict the items.
        dedup=0.97 drops results within that cosine of a better-ranked result. sort='taken' / '-taken' (any
        metadata column) orders those results by it, keeping their relevance ranks; columns=['taken', ...]
        attaches those metadata values to each hit (Hit.values, and to_dict()).
        """
        batch = _is_batch(queries)
        items = list(queries) if batch else [queries]
        if not items:
            raise PixdexError("no queries given")
        parsed = [as_query(q) for q in items]
        arrange = self.arrangement(sort, columns)
        out = self._search_queries(parsed, k, threshold, where, path_glob, path_prefix, dedup, template)
        out = [self.arrange(hits, *arrange) for hits in out]
        return out if batch else out[0]

    def search_text(self, texts: str | Sequence[str], template: str | None = None, **kw):
        """Rank by free text (never parsed as a mix or a path); template like 'a photo of {}'."""
        batch = not isinstance(texts, str)
        if batch and not isinstance(texts, Sequence):
            raise InvalidType(f"search_text takes a string or a list of strings, got {type(texts).__name__}")
        items = list(texts) if batch else [texts]
        for t in items:
            if not isinstance(t, str):
                raise InvalidType(f"query text must be a string, got {type(t).__name__}")
            if not t.strip():
                raise PixdexError("empty query text")
        qs = [Query((Term("text", t.strip()),), label=t.strip()) for t in items]
        return self.search(qs if batch else qs[0], template=template, **kw)

    def search_image(self, images: Any, **kw):
        """Rank by image: a path, URL, PIL image or bytes (or a list of them)."""
        batch = isinstance(images, (list, tuple))
        items = list(images) if batch else [images]
        qs = [Query((Term("image", os.fspath(i) if isinstance(i, os.PathLike) else i),),
                    label=str(i) if isinstance(i, (str, os.PathLike)) else "") for i in items]
        return self.search(qs if batch else qs[0], **kw)

    def search_embedding(self, vectors: np.ndarray, **kw):
        """Rank by raw embedding(s): a 1-d vector or a 2-d batch (normalised here)."""
        vectors = _as_embeddings(vectors, self.store.dim)
        if vectors.ndim == 1:
            return self.search(Query((Term("embedding", vectors),)), **kw)
        return self.search([Query((Term("embedding", v),)) for v in vectors], **kw)

    def more_like(self, item: int | str | Sequence[int | str], k: int | None = 10, exclude_self: bool = True,
                  **kw):
        """Items similar to a stored item, given by id or by stored path (the item itself left out)."""
        batch = isinstance(item, (list, tuple))
        items = list(item) if batch else [item]
        qs, selves = [], []
        for it in items:
            if isinstance(it, (str, os.PathLike)):
                ident = self.id_for_path(os.fspath(it))
            else:
                ident = check_id(it, "more_like: item")
            qs.append(Query((Term("id", ident),), label=f"like {it}"))
            selves.append(ident)
        deeper = k + 1 if (k is not None and exclude_self) else k
        arrange = self.arrangement(kw.pop("sort", None), kw.pop("columns", None))
        results = self.search(qs, k=deeper, **kw)
        if exclude_self:
            results = [_rerank([h for h in hits if h.id != me])[:k] if k is not None
                       else _rerank([h for h in hits if h.id != me]) for hits, me in zip(results, selves)]
        results = [self.arrange(hits, *arrange) for hits in results]
        return results if batch else results[0]

    # ---- ordering ---------------------------------------------------------------------------
    def arrangement(self, sort: str | None, columns: Sequence[str] | None) -> tuple[Order | None, list[str]]:
        """A checked sort order and the columns to attach (errors before any query is encoded)."""
        if sort is None and not columns:
            return None, []
        schema = self.store.metadata().schema
        order = parse_sort(sort, schema)
        cols = check_columns(columns, schema)
        if order is not None and order.column not in cols:
            cols.append(order.column)
        return order, cols

    def arrange(self, hits: list[Hit], order: Order | None, columns: list[str]) -> list[Hit]:
        """Attach the columns' values to the hits and reorder them by the sort column, if any."""
        if not columns:
            return hits
        values = column_values(self.store, [h.id for h in hits], columns)
        for h, v in zip(hits, values):
            h.values = v
        return order_hits(hits, values, order)

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, queries: Sequence[Query], template: str | None = None) -> np.ndarray:
        """Query vectors (float32, L2-normalised), one row per query; encoders run once per batch."""
        texts: dict[str, int] = {}
        images: dict[Any, int] = {}
        image_list: list[Any] = []
        ids: dict[int, int] = {}
        for q in queries:
            for t in q.terms:
                if t.kind == "text":
                    texts.setdefault(_apply_template(t.value, template), len(texts))
                elif t.kind == "image":
                    key = t.value if isinstance(t.value, str) else id(t.value)
                    if key not in images:
                        images[key] = len(image_list)
                        image_list.append(t.value)
                elif t.kind in ("id", "like"):
                    ident = t.value if t.kind == "id" else self.id_for_path(t.value)
                    ids.setdefault(ident, len(ids))
        dim = self.store.dim
        text_emb = self.encode_texts(list(texts)) if texts else None
        image_emb = self.encode_images(image_list) if image_list else None
        id_emb = _normalise(self.store.vectors(np.array(list(ids), np.int64))) if ids else None
        out = np.zeros((len(queries), dim), np.float32)
        for row, q in enumerate(queries):
            v = np.zeros(dim, np.float64)
            for t in q.terms:
                if t.kind == "text":
                    e = text_emb[texts[_apply_template(t.value, template)]]
                elif t.kind == "image":
                    e = image_emb[images[t.value if isinstance(t.value, str) else id(t.value)]]
                elif t.kind in ("id", "like"):
                    e = id_emb[ids[t.value if t.kind == "id" else self.id_for_path(t.value)]]
                else:
                    e = _check_embedding(t.value, dim)
                v += t.weight * e
            norm = np.linalg.norm(v)
            if norm < 1e-6:
                raise PixdexError(f"query {q.label!r} cancels out to a zero vector")
            out[row] = v / norm
        return out

    def id_for_path(self, path: str) -> int:
        """The store id of a stored path (absolute file path or dataset key)."""
        if self._path_ids is None:
            try:
                meta = self.store.metadata()
            except FileNotFoundError:  # swept by later writers: move to the latest snapshot
                self.refresh()
                meta = self.store.metadata()
            self._path_ids = dict(zip(meta["path"].to_pylist(), meta["id"].to_pylist()))
        for cand in (path, os.path.abspath(os.path.expanduser(path))):
            if cand in self._path_ids:
                return int(self._path_ids[cand])
        raise PixdexError(f"path {path} is not in store {self.path} (search with the image itself instead)")

    # ---- scopes (filters) -------------------------------------------------------------------
    def scope(self, where: str | None = None, path_glob: str | None = None,
              path_prefix: str | None = None) -> Scope:
        """The eligible items for these filters, and how the index is restricted to them."""
        key = (where, path_glob, path_prefix)
        if key not in self._scope_cache:
            if len(self._scope_cache) > 32:
                self._scope_cache.clear()
            try:
                scope = self._make_scope(where, path_glob, path_prefix)
            except FileNotFoundError:  # later writers swept this old snapshot's tables: move to the latest
                self.refresh()
                scope = self._make_scope(where, path_glob, path_prefix)
            self._scope_cache[key] = scope
        return self._scope_cache[key]

    def _make_scope(self, where, path_glob, path_prefix) -> Scope:
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
        if self._index is None:
            return Scope(n, ids, exact=True)
        if ids is not None and (n <= EXACT_SUBSET or (self.index_type == "flat" and 4 * n < store.count)):
            return Scope(n, ids, exact=True)
        live = store.ids() if (ids is None and self._stale) else ids
        tail = None
        if self._stale:
            all_live = store.ids() if live is None else live
            tail = all_live[all_live > self._indexed_max]
        if ids is None and not self._stale:
            return Scope(n, None)
        indexed = live[live <= self._indexed_max]
        selector, keep = _bitmap_selector(indexed, self._indexed_max + 1)
        fraction = max(len(indexed), 1) / max(int(self._index.ntotal), 1)
        return Scope(n, ids, selector, tail if tail is not None and len(tail) else None, keep=keep,
                     fraction=min(1.0, fraction))

    # ---- the search -------------------------------------------------------------------------
    def _search_queries(self, queries, k, threshold, where, path_glob, path_prefix, dedup, template):
        _validate(k, threshold, dedup)
        for q in queries:  # a missing or non-regular image file is refused before the model loads
            for t in q.terms:
                if t.kind == "image" and isinstance(t.value, str) and image_file_of(t.value) is not None:
                    check_image_file(t.value)
        scope = self.scope(where, path_glob, path_prefix)  # filter errors before loading a model
        t0 = time.perf_counter()
        Q = self.encode(queries, template)
        t1 = time.perf_counter()
        found = self.search_vectors(Q, k, threshold, scope, dedup)
        t2 = time.perf_counter()
        self.last_timings = {"encode_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3}
        out = []
        for ids, scores in found:
            paths = self.paths(ids)
            hits = [Hit(r + 1, int(i), p, float(s)) for r, (i, s, p) in enumerate(zip(ids, scores, paths))]
            for h in hits:
                h._searcher = self  # not a field: asdict/repr/== stay plain
            out.append(hits)
        return out

    def search_vectors(self, Q: np.ndarray, k: int | None, threshold: float | None, scope: Scope | None = None,
                       dedup: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, exact cosine scores) per query row of Q, best first, ties by id."""
        _validate(k, threshold, dedup)
        scope = scope or self.scope()
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        if scope.n == 0:
            return [(np.zeros(0, np.int64), np.zeros(0)) for _ in Q]
        if k is None:
            cands = self._range_candidates(Q, threshold, scope)
            return [self._finish(Q[i], c, threshold, dedup, None)[:2] for i, c in enumerate(cands)]
        want = min(k, scope.n)
        depth = min(scope.n, self._first_depth(k, dedup))
        boost = 1
        results: list = [None] * len(Q)
        pending = list(range(len(Q)))
        while pending:
            exact = scope.exact or depth >= scope.n or boost > MAX_BOOST
            sub = Q[pending]
            cands = self._exact(sub, depth, scope.ids) if exact else self._knn(sub, depth, scope, boost)
            still = []
            for j, qi in enumerate(pending):
                ids, scores, lowest = self._finish(Q[qi], cands[j], threshold, dedup, k)
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

    def _first_depth(self, k: int, dedup: float | None) -> int:
        """Candidates fetched per query: a margin over k (ties, dedup), more for PQ's coarse scores."""
        depth = 2 * k + 10
        if self.index_type == "ivfpq":
            depth = max(depth, rescore_depth(k))  # the depth the indexer tuned nprobe for
        if dedup is not None:
            depth *= 2
        return depth

    def _search_params(self, scope: Scope, depth: int, boost: float, probes: int | None = None):
        """FAISS search parameters: the manifest's nprobe/efSearch, widened for filters and deepening.

        A filter keeping a fraction f of the items widens the search by 1/f, so about as many eligible
        vectors are visited as an unfiltered search would visit.
        """
        import faiss

        kind, selector = self.index_type, scope.selector
        widen = boost / max(scope.fraction, 1e-6)
        if kind == "hnsw":
            ef = max(math.ceil(int(self._params.get("efSearch", 16)) * widen), depth)
            return faiss.SearchParametersHNSW(sel=selector, efSearch=min(ef, MAX_EF))
        if kind in ("ivf", "ivfpq"):
            nlist = int(self.store.index_info.get("nlist") or ivf_of(self._index).nlist)
            nprobe = min(nlist, probes or math.ceil(int(self._params.get("nprobe", 1)) * widen))
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _knn(self, Q: np.ndarray, depth: int, scope: Scope, boost: int, probes: int | None = None) -> list[np.ndarray]:
        """Candidate ids per query from the index (plus exact candidates among not-yet-indexed ids)."""
        params = self._search_params(scope, depth, boost, probes)
        with _faiss_threads(len(Q)):
            _, labels = self._index.search(Q, depth, params=params)
        cands = [row[row >= 0] for row in labels]
        if scope.tail is not None:
            extra = self._exact(Q, min(depth, len(scope.tail)), scope.tail)
            cands = [np.concatenate([a, b]) for a, b in zip(cands, extra)]
        return cands

    def neighbour_candidates(self, Q: np.ndarray, depth: int, probes: int | None = None
                             ) -> tuple[np.ndarray, np.ndarray, float]:
        """Approximate top-`depth` neighbours of each query row over every live item, for bulk tools (the
        duplicate finder) that rescore only the few pairs that matter: (ids [nq, m], scores [nq, m], slack).

        ids are -1 where there are fewer; scores are the index's (exact for flat, IVF-Flat and HNSW; PQ ones
        may be off by up to `slack`). probes: IVF lists to visit instead of the tuned nprobe.
        """
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        scope = self.scope()
        depth = max(1, min(depth, scope.n))
        if scope.n == 0:
            return np.full((len(Q), 1), -1, np.int64), np.full((len(Q), 1), -np.inf, np.float32), 0.0
        if scope.exact:
            ids, scores = self._exact_scored(Q, depth, scope.ids)
            return ids, scores, 1e-4
        params = self._search_params(scope, depth, 1, probes)
        with _faiss_threads(len(Q)):
            scores, ids = self._index.search(Q, depth, params=params)
        if scope.tail is not None:
            t_ids, t_scores = self._exact_scored(Q, min(depth, len(scope.tail)), scope.tail)
            ids, scores = np.hstack([ids, t_ids]), np.hstack([scores, t_scores])
        return ids, scores, RANGE_SLACK.get(self.index_type, 1e-3)

    def _exact_scored(self, Q: np.ndarray, depth: int, ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-`depth` (ids, scores) per query over the given ids (or all live items), -1 padded."""
        best_ids = np.full((len(Q), depth), -1, np.int64)
        best = np.full((len(Q), depth), -np.inf, np.float32)
        for block_ids, vecs in self._blocks(ids):
            s = np.hstack([best, Q @ vecs.T])
            b = np.hstack([best_ids, np.broadcast_to(block_ids, (len(Q), len(block_ids)))])
            top = np.argpartition(-s, depth - 1, axis=1)[:, :depth] if s.shape[1] > depth else np.arange(s.shape[1])[None]
            best = np.take_along_axis(s, top, axis=1) if s.shape[1] > depth else s
            best_ids = np.take_along_axis(b, top, axis=1) if s.shape[1] > depth else b
        return best_ids, best

    def _range_candidates(self, Q: np.ndarray, threshold: float, scope: Scope) -> list[np.ndarray]:
        """Candidate ids per query scoring about >= threshold (FAISS range search or deepening)."""
        slack = RANGE_SLACK.get(self.index_type, 1e-4)
        if scope.exact:
            return self._exact_range(Q, threshold - 1e-4, scope.ids)
        if self.index_type in ("flat", "ivf", "ivfpq"):
            params = self._search_params(scope, 0, RANGE_BOOST)
            with _faiss_threads(len(Q)):
                lims, _, labels = self._index.range_search(Q, float(threshold - slack), params=params)
            cands = [labels[lims[i]:lims[i + 1]] for i in range(len(Q))]
        else:  # HNSW: no reliable range search; deepen a k-NN search until it passes the threshold
            cands = []
            for q in Q:
                depth = 256
                while True:
                    if depth >= scope.n // 4:
                        cands.append(self._exact_range(q[None], threshold - 1e-4, scope.ids)[0])
                        break
                    params = self._search_params(scope, depth, 1)
                    with _faiss_threads(1):
                        dist, labels = self._index.search(q[None], depth, params=params)
                    got = labels[0] >= 0
                    if got.sum() < depth or dist[0][got].min() < threshold - slack:
                        cands.append(labels[0][got])
                        break
                    depth *= 4
        if scope.tail is not None:
            extra = self._exact_range(Q, threshold - 1e-4, scope.tail)
            cands = [np.concatenate([a, b]) for a, b in zip(cands, extra)]
        return cands

    def _blocks(self, ids: np.ndarray | None):
        """(ids, float32 vectors) blocks over the given ids, or over every live item."""
        if ids is None:
            for block_ids, emb in self.store.iter_embeddings(BATCH_ROWS):
                yield block_ids, emb.astype(np.float32)
            return
        for start in range(0, len(ids), BATCH_ROWS):
            chunk = ids[start:start + BATCH_ROWS]
            yield chunk, self.store.vectors(chunk)

    def _exact(self, Q: np.ndarray, depth: int, ids: np.ndarray | None) -> list[np.ndarray]:
        """Exact top-`depth` candidate ids per query over the given ids (or all live items)."""
        best_ids = [np.zeros(0, np.int64) for _ in Q]
        best_scores = [np.zeros(0, np.float32) for _ in Q]
        for block_ids, vecs in self._blocks(ids):
            scores = Q @ vecs.T
            for i in range(len(Q)):
                s = np.concatenate([best_scores[i], scores[i]])
                b = np.concatenate([best_ids[i], block_ids])
                if len(s) > depth:
                    top = np.argpartition(-s, depth - 1)[:depth]
                    s, b = s[top], b[top]
                best_scores[i], best_ids[i] = s, b
        return best_ids

    def _exact_range(self, Q: np.ndarray, radius: float, ids: np.ndarray | None) -> list[np.ndarray]:
        found = [[] for _ in Q]
        for block_ids, vecs in self._blocks(ids):
            scores = Q @ vecs.T
            for i in range(len(Q)):
                found[i].append(block_ids[scores[i] >= radius])
        return [np.concatenate(f) if f else np.zeros(0, np.int64) for f in found]

    def _finish(self, q: np.ndarray, cand: np.ndarray, threshold, dedup, k):
        """Exact rescoring of candidates: (ids, scores, lowest candidate score), best first, ties by id."""
        ids = np.unique(np.asarray(cand, np.int64))
        if not len(ids):
            return ids, np.zeros(0), -np.inf
        vecs = self.store.vectors(ids).astype(np.float64)
        scores = vecs @ q.astype(np.float64)
        order = np.lexsort((ids, -scores))
        ids, scores, vecs = ids[order], scores[order], vecs[order]
        lowest = float(scores[-1])
        if threshold is not None:
            keep = scores >= threshold
            ids, scores, vecs = ids[keep], scores[keep], vecs[keep]
        if dedup is not None and len(ids) > 1:
            keep = _dedup(vecs, dedup, k)
            ids, scores = ids[keep], scores[keep]
        if k is not None:
            ids, scores = ids[:k], scores[:k]
        return ids, scores, lowest

    # ---- paths ------------------------------------------------------------------------------
    def paths(self, ids: np.ndarray) -> list[str]:
        """Stored paths for ids, reading only the metadata shards that hold them."""
        if not len(ids):
            return []
        shard, rows = self.store.locate(ids)
        out = [""] * len(ids)
        for s in np.unique(shard):
            col = self._shard_paths(int(s))
            for j in np.nonzero(shard == s)[0]:
                out[j] = col[int(rows[j])].as_py()
        return out

    def _shard_paths(self, s: int):
        """Shard s's path column (a pyarrow array indexed by row), read once and cached."""
        if s not in self._path_cache:
            info = self.store.manifest["shards"][s]
            try:
                table = self.store.read_shard_metadata(s, ["id", "path"])
            except StoreDamaged:  # rewritten and swept by later writers: ids and paths are unchanged
                fresh = Store.open(self.path)
                info = fresh.manifest["shards"][s]
                table = fresh.read_shard_metadata(s, ["id", "path"])
            col = table.column("path").combine_chunks()
            ids = table.column("id")
            first = info["first_id"]
            if not (len(col) == info["rows"] and ids[0].as_py() == first and ids[-1].as_py() == first + len(col) - 1):
                by_row = [""] * info["rows"]  # not laid out by row (never written so): place by id
                for i, p in zip(ids.to_pylist(), col.to_pylist()):
                    by_row[int(i) - first] = p
                col = pa.array(by_row, pa.string())
            self._path_cache[s] = col
        return self._path_cache[s]


# ---- helpers -----------------------------------------------------------------------------------
def _validate(k, threshold, dedup) -> None:
    """The shared numeric rules (indexer.params) for k, threshold and dedup."""
    if k is None and threshold is None:
        raise PixdexError("give k (how many results) or a score threshold")
    if k is not None:
        K.check(k, "k")
    if threshold is not None:
        COSINE.check(threshold, "threshold")
    if dedup is not None:
        DEDUP.check(dedup, "dedup")


def _as_embeddings(vectors: Any, dim: int) -> np.ndarray:
    """A 1-d vector or a 2-d batch of `dim` finite numbers as float32 (clear errors, not numpy's)."""
    try:
        arr = np.asarray(vectors)
    except (TypeError, ValueError, OverflowError):  # ragged nesting, odd objects
        arr = None
    if arr is None or arr.dtype.kind not in "iuf" or arr.ndim not in (1, 2):
        raise InvalidType(f"an embedding must be a list of {dim} numbers (or a batch of such lists), got "
                          f"{describe(vectors) if arr is None or arr.ndim == 0 else f'{arr.ndim}-d {arr.dtype} data'}")
    if arr.shape[-1] != dim:
        raise InvalidValue(f"embedding has {arr.shape[-1]} dimensions; the store's model gives {dim}")
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InvalidValue("embedding must hold finite numbers")
    return arr


def _apply_template(text: str, template: str | None) -> str:
    if not template:
        return text
    if "{}" not in template:
        raise PixdexError(f"template {template!r} needs {{}} where the query text goes, e.g. 'a photo of {{}}'")
    return template.replace("{}", text)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _check_embedding(v: Any, dim: int) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise PixdexError(f"embedding has {v.shape[0]} dimensions; the store's model gives {dim}")
    if not np.isfinite(v).all() or np.linalg.norm(v) == 0:
        raise PixdexError("embedding must be finite and non-zero")
    return _normalise(v)


def _dedup(vecs: np.ndarray, threshold: float, k: int | None) -> np.ndarray:
    """Positions kept when dropping items within `threshold` cosine of a better-ranked kept item."""
    kept: list[int] = []
    for i in range(len(vecs)):
        if kept and float(np.max(vecs[kept] @ vecs[i])) >= threshold:
            continue
        kept.append(i)
        if k is not None and len(kept) >= k:
            break
    return np.array(kept, dtype=np.int64)


def _rerank(hits: list[Hit]) -> list[Hit]:
    for r, h in enumerate(hits):
        h.rank = r + 1
    return hits


_THREADS_LOCK = threading.Lock()


@contextmanager
def _torch_threads(n_items: int):
    """Encode a handful of queries on one torch thread: a batch this small gains little from more, and on
    a busy machine (CI runners, a server next to an index job) their spinning costs 5-10x the latency."""
    if n_items == 0 or n_items > SMALL_BATCH:  # nothing to encode (no torch import), or a real batch
        yield
        return
    import torch

    with _THREADS_LOCK:  # torch's setting is process-wide: set and restore it under one lock
        before = torch.get_num_threads()
        if before > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if before > 1:
                torch.set_num_threads(before)


@contextmanager
def _faiss_threads(n_queries: int):
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


def _bitmap_selector(ids: np.ndarray, size: int):
    """A faiss IDSelectorBitmap over ids in [0, size) (returns the selector and its backing array)."""
    import faiss

    mask = np.zeros(max(size, 1), dtype=bool)
    mask[ids] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits
