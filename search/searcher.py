"""Searcher: encode queries with the store's model and rank stored images by cosine similarity.

Every result's score is the exact cosine between the query and the stored (float16) embedding, and
results are ordered by (-score, id); the FAISS index only proposes candidates. So on a flat index the
answer equals brute force, and on approximate indexes only recall can differ. Filters restrict the
index search itself (a FAISS id selector, or exact search over the matching subset when it is small),
and the search deepens until k matching items are found or none are left.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import InvalidType, PixdexError, StoreDamaged
from indexer.ids import check_id
from indexer.inputs import check_image_file, image_file_of
from indexer.params import COSINE, DEDUP, K
from indexer.remote_store import open_path
from indexer.store import Store
from search.candidates import Candidates, Scope
from search.encoding import QueryEncoder, as_embeddings
from search.hits import Hit, rerank
from search.ordering import Order, check_columns, column_values, order_hits, parse_sort
from search.query import Query, Term, as_query

__all__ = ["Hit", "Scope", "Searcher"]


def _is_batch(queries: Any) -> bool:
    """True for several queries at once: a list or tuple, or a 2-d array of embeddings."""
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
        self.queries = QueryEncoder(model, device)
        self._open(store if isinstance(store, Store) else None)
        if model is not None:
            self.encoder  # load and check the model now, not at the first query
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
        self.candidates = Candidates(store, index)
        self.index_type = self.candidates.index_type
        self._scope_cache: dict[tuple, Scope] = {}
        self._path_ids: dict[str, int] | None = None

    def reopened(self) -> Searcher:
        """A new Searcher on the store's latest committed state, sharing this one's models (nothing is
        reloaded). Unlike refresh(), this one is left as it was: a server swaps whole snapshots."""
        fresh = copy.copy(self)
        fresh._open()
        fresh.last_timings = {}
        if fresh.queries.loaded is not None:
            fresh.store.check_model(fresh.queries.loaded.info)
        return fresh

    def refresh(self) -> None:
        """Switch to the store's latest committed state (for long-lived searchers)."""
        self._open()
        if self.queries.loaded is not None:
            self.store.check_model(self.queries.loaded.info)

    @property
    def count(self) -> int:
        return self.store.count

    @property
    def encoder(self):
        """The store's model (loaded once per process), checked against the store's fingerprint."""
        return self.queries.encoder(self.store)

    def fast_encoder(self, tower: str):
        """The ONNX query path of the store's model for "text" or "image", or None (see QueryEncoder)."""
        return self.queries.fast_encoder(self.store, tower)

    @property
    def text_encoder(self):
        """The fast text path, or None (see fast_encoder)."""
        return self.fast_encoder("text")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.queries.encode_texts(self.store, texts)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.queries.encode_images(self.store, images)

    def encode(self, queries: Sequence[Query], template: str | None = None) -> np.ndarray:
        """Query vectors (float32, L2-normalised), one row per query."""
        return self.queries.encode(self.store, queries, template, self.id_for_path)

    # ---- public queries ---------------------------------------------------------------------
    def search(self, queries: Any, k: int | None = 10, threshold: float | None = None,
               where: str | None = None, path_glob: str | None = None, path_prefix: str | None = None,
               dedup: float | None = None, template: str | None = None, sort: str | None = None,
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
        batch = _is_batch(texts)
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
        batch = _is_batch(images)
        items = list(images) if batch else [images]
        qs = [Query((Term("image", os.fspath(i) if isinstance(i, os.PathLike) else i),),
                    label=str(i) if isinstance(i, (str, os.PathLike)) else "") for i in items]
        return self.search(qs if batch else qs[0], **kw)

    def search_embedding(self, vectors: np.ndarray, **kw):
        """Rank by raw embedding(s): a 1-d vector or a 2-d batch (normalised here)."""
        vectors = as_embeddings(vectors, self.store.dim)
        if not _is_batch(vectors):
            return self.search(Query((Term("embedding", vectors),)), **kw)
        return self.search([Query((Term("embedding", v),)) for v in vectors], **kw)

    def more_like(self, item: int | str | Sequence[int | str], k: int | None = 10, exclude_self: bool = True,
                  **kw):
        """Items similar to a stored item, given by id or by stored path (the item itself left out)."""
        batch = _is_batch(item)
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
            results = [rerank([h for h in hits if h.id != me])[:k] if k is not None
                       else rerank([h for h in hits if h.id != me]) for hits, me in zip(results, selves)]
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

    # ---- lookups ----------------------------------------------------------------------------
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
                scope = self.candidates.make_scope(where, path_glob, path_prefix)
            except FileNotFoundError:  # later writers swept this old snapshot's tables: move to the latest
                self.refresh()
                scope = self.candidates.make_scope(where, path_glob, path_prefix)
            self._scope_cache[key] = scope
        return self._scope_cache[key]

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

    def search_vectors(self, Q: np.ndarray, k: int | None, threshold: float | None,
                       scope: Scope | None = None,
                       dedup: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, exact cosine scores) per query row of Q, best first, ties by id."""
        _validate(k, threshold, dedup)
        return self.candidates.search(Q, k, threshold, scope or self.scope(), dedup)

    def neighbour_candidates(self, Q: np.ndarray, depth: int, probes: int | None = None
                             ) -> tuple[np.ndarray, np.ndarray, float]:
        """Approximate neighbours for bulk tools (the duplicate finder); see Candidates.neighbours."""
        return self.candidates.neighbours(Q, depth, probes)

    # ---- paths ------------------------------------------------------------------------------
    def paths(self, ids: np.ndarray) -> list[str]:
        """Stored paths for ids, reading only the metadata shards that hold them."""
        return self.store.paths(ids) if len(ids) else []


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
