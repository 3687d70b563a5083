"""What the HTTP API does, independent of HTTP: validated, bounded calls into search and classify."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from indexer.errors import PixdexError
from pixdex import __version__
from pixdex.server.limits import Limits
from search.searcher import Searcher

FILTER_VALUES_MAX = 50  # a string column with at most this many distinct values becomes a filter menu


class NotFound(PixdexError):
    status = 404


class TooLarge(PixdexError):
    status = 413


class Invalid(PixdexError):
    status = 422


class StoreService:
    """One store, one model, the server's limits."""

    version = __version__

    def __init__(self, store: str | Path, model: str | None = None, device: str = "auto",
                 limits: Limits | None = None):
        self.limits = limits or Limits()
        self._duplicates: dict = {}  # (generation, threshold, tolerance) -> report
        self.searcher = Searcher(store, model=model, device=device)
        self.store = self.searcher.store
        fast = self.searcher.text_encoder if model is None else None
        if fast is not None:
            fast.encode_texts(["warm up"])  # text queries run on the fast path: ready now, no torch import
            self.searcher.fast_encoder("image")  # image queries too, when the model has an image export
        else:
            self.searcher.encoder  # noqa: B018 - load the model now, not on the first request

    @property
    def encoder(self):
        """The transformers encoder (image queries, classify): loaded on first use when texts run fast."""
        return self.searcher.encoder

    # ---- validation -------------------------------------------------------------------------
    def check_k(self, k) -> int:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.limits.max_k:
            raise Invalid(f"k must be an integer from 1 to {self.limits.max_k}, got {k!r}")
        return k

    def check_query(self, q) -> str:
        if not isinstance(q, str) or not q.strip():
            raise PixdexError("empty query")
        if len(q) > self.limits.max_query_chars:
            raise TooLarge(f"query of {len(q)} characters exceeds the {self.limits.max_query_chars} limit")
        return q

    def check_labels(self, labels) -> list[str]:
        if not isinstance(labels, list) or not labels:
            raise PixdexError("labels must be a non-empty list of strings")
        if len(labels) > self.limits.max_labels:
            raise TooLarge(f"{len(labels)} labels exceed the limit of {self.limits.max_labels}")
        for lab in labels:
            if not isinstance(lab, str) or not lab.strip():
                raise PixdexError(f"every label must be a non-empty string, got {lab!r}")
            if len(lab) > self.limits.max_query_chars:
                raise TooLarge(f"label of {len(lab)} characters exceeds the {self.limits.max_query_chars} limit")
        return labels

    # ---- search -----------------------------------------------------------------------------
    def search(self, queries: list[str], k: int = 10, where: str | None = None,
               threshold: float | None = None, sort: str | None = None, columns=None) -> list[list[dict]]:
        k = self.check_k(k)
        if len(queries) > self.limits.max_queries:
            raise TooLarge(f"{len(queries)} queries exceed the limit of {self.limits.max_queries}")
        queries = [self.check_query(q) for q in queries]
        results = self.searcher.search(queries, k=k, where=where, threshold=threshold, sort=sort, columns=columns)
        return [[h.to_dict() for h in hits] for hits in results]

    def search_image(self, image, k: int = 10, where: str | None = None, threshold: float | None = None,
                     sort: str | None = None, columns=None):
        hits = self.searcher.search_image(image, k=self.check_k(k), where=where, threshold=threshold, sort=sort,
                                          columns=columns)
        return [h.to_dict() for h in hits]

    def search_body(self, body: dict) -> dict:
        """POST /api/search JSON: one of query (text or mix syntax), queries, id, embedding."""
        k = body.get("k", 10)
        where, threshold = body.get("where"), body.get("threshold")
        order = {"sort": body.get("sort"), "columns": body.get("columns")}  # e.g. "-taken", ["taken"]
        if "queries" in body:
            qs = body["queries"]
            if not isinstance(qs, list):
                raise Invalid("queries must be a list of strings")
            return {"queries": qs, "results": self.search(qs, k, where, threshold, **order)}
        if "query" in body:
            return {"query": body["query"], "results": self.search([body["query"]], k, where, threshold, **order)[0]}
        if "id" in body:
            ident = body["id"]
            if not isinstance(ident, int) or isinstance(ident, bool):
                raise Invalid(f"id must be an integer, got {ident!r}")
            self.item(ident)
            hits = self.searcher.more_like(ident, k=self.check_k(k), where=where, threshold=threshold, **order)
            return {"id": ident, "results": [h.to_dict() for h in hits]}
        if "embedding" in body:
            vec = body["embedding"]
            if not isinstance(vec, list) or len(vec) != self.store.dim:
                raise Invalid(f"embedding must be a list of {self.store.dim} numbers")
            hits = self.searcher.search_embedding(np.asarray(vec, np.float32), k=self.check_k(k), where=where,
                                                  threshold=threshold, **order)
            return {"results": [h.to_dict() for h in hits]}
        raise PixdexError("search body needs one of: query, queries, id, embedding")

    # ---- classify ---------------------------------------------------------------------------
    def classify_ids(self, ids, labels, template: str | None, top_k=None) -> dict:
        from pixdex.server.tagging import score_ids

        labels = self.check_labels(labels)
        if not isinstance(ids, list) or not ids:
            raise PixdexError("ids must be a non-empty list of stored ids")
        if len(ids) > self.limits.max_ids:
            raise TooLarge(f"{len(ids)} ids exceed the limit of {self.limits.max_ids}")
        for i in ids:
            self.item(i)
        return {"results": score_ids(self, ids, labels, template, top_k)}

    def classify_image(self, image, labels, template: str | None) -> dict:
        from pixdex.server.tagging import score_image

        return {"labels": score_image(self, image, self.check_labels(labels), template)}

    # ---- duplicates -------------------------------------------------------------------------
    def duplicates(self, threshold=None, tolerance=None, limit=None) -> dict:
        """Duplicate groups (search.duplicates), computed once per store state and settings, at most `limit`."""
        from indexer.params import DUP_THRESHOLD, PIXEL_TOLERANCE
        from search.duplicates import DEFAULT_THRESHOLD, find_duplicates
        from search.lookalike import DEFAULT_TOLERANCE

        threshold = DUP_THRESHOLD.check(DEFAULT_THRESHOLD if threshold is None else threshold, "threshold")
        tolerance = PIXEL_TOLERANCE.check(DEFAULT_TOLERANCE if tolerance is None else tolerance, "tolerance")
        limit = self.limits.max_k if limit is None else limit
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= self.limits.max_k:
            raise Invalid(f"limit must be an integer from 1 to {self.limits.max_k}, got {limit!r}")
        key = (self.store.manifest["generation"], threshold, tolerance)
        cache = self._duplicates
        if key not in cache:
            cache.clear()
            cache[key] = find_duplicates(self.searcher, threshold=threshold, tolerance=tolerance).to_dict()
        report = dict(cache[key])
        report["groups"] = report["groups"][:limit]
        return report

    # ---- items ------------------------------------------------------------------------------
    def item(self, item_id) -> dict:
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            raise Invalid(f"id must be an integer, got {item_id!r}")
        try:
            meta = self.store.item(item_id)
        except PixdexError:
            raise NotFound(f"unknown id {item_id} (the store has {self.store.count} items)") from None
        return {k: _jsonable(v) for k, v in meta.items()}

    def info(self) -> dict:
        idx = self.store.index_info
        table = self.store.metadata()
        filters = {}
        for name in self.store.tag_sets():
            for col in table.column_names:
                if col == name or col.startswith(name + "_") and not col.endswith("score"):
                    values = [v for v in table[col].unique().to_pylist() if isinstance(v, str)]
                    if 0 < len(values) <= FILTER_VALUES_MAX:
                        filters[col] = sorted(values)
        return {"count": self.store.count, "dim": self.store.dim, "model": self.store.model["name"],
                "index": {"type": idx.get("type"), "recall_at_10": idx.get("recall_at_10")},
                "columns": table.column_names, "filters": filters, "limits": asdict(self.limits)}


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
