"""What the HTTP API does, independent of HTTP: validated, bounded calls into search and classify.

The service follows the store: every request starts from the newest committed snapshot (one stat of
manifest.json per request; a changed manifest is opened once and swapped in whole), so a re-index shows
without a restart and a request never mixes two generations. Model calls go through one lock (the encoder
is not re-entrant); parsing, checks, URL fetches and image decoding happen before it is taken.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np

from classify.prompts import DEFAULT_TEMPLATE, check_labels, check_template
from indexer.errors import InvalidType, InvalidValue, LimitExceeded, PixdexError
from indexer.ids import check_id, describe
from indexer.inputs import fetch_url, load_image_input
from indexer.params import TOP_K
from indexer.remote_store import open_path
from pixdex import __version__
from pixdex.server.files import thumbnail_cache
from pixdex.server.limits import Limits
from search.query import Query, Term, parse_query
from search.searcher import Searcher

FILTER_VALUES_MAX = 50  # a string column with at most this many distinct values becomes a filter menu
MAX_URL_TERMS = 4  # image URLs fetched per request (with --allow-url-queries)


class NotFound(PixdexError):
    status = 404


class TooLarge(LimitExceeded):
    status = 413


class Invalid(InvalidValue):
    status = 422


def manifest_signature(store: Path) -> tuple | None:
    """What changes whenever a writer commits (the manifest is replaced atomically): inode, mtime, size."""
    try:
        st = os.stat(store / "manifest.json")
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class StoreService:
    """One store (followed across commits), one model, the server's limits."""

    version = __version__

    def __init__(self, store: str | Path, model: str | None = None, device: str = "auto",
                 limits: Limits | None = None):
        self.limits = limits or Limits()
        self._duplicates: dict = {}  # (generation, threshold, tolerance) -> report
        self.model_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.path = open_path(store)
        self._signature = manifest_signature(self.path)  # before opening: a commit in between is seen later
        self._searcher = Searcher(self.path, model=model, device=device)
        fast = self._searcher.text_encoder if model is None else None
        if fast is not None:
            fast.encode_texts(["warm up"])  # text queries run on the fast path: ready now, no torch import
        else:
            self._searcher.encoder  # load the model now, not on the first request
        self.generation = self._searcher.store.manifest.get("generation")
        self._thumbnails: list = []  # [folder or None] once the first thumbnail asked for it
        self._classifier = None

    # ---- the snapshot -----------------------------------------------------------------------
    def current(self) -> Searcher:
        """The newest committed snapshot; a request takes it once and uses only it."""
        sig = manifest_signature(self.path)
        if sig is None or sig == self._signature or not self._reload_lock.acquire(blocking=False):
            return self._searcher  # unchanged, or another request is opening the new one right now
        try:
            if sig != self._signature:
                self._signature = sig  # a generation that cannot be opened is tried once, not per request
                try:
                    fresh = self._searcher.reopened()
                except (PixdexError, OSError, ValueError, RuntimeError) as exc:
                    print(f"pixdex serve: still serving generation {self.generation}: "
                          f"cannot open the new one: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                          file=sys.stderr)
                else:
                    self._searcher, self.generation = fresh, fresh.store.manifest.get("generation")
        finally:
            self._reload_lock.release()
        return self._searcher

    @property
    def encoder(self):
        """The transformers encoder (image queries, classify): loaded on first use when texts run fast."""
        return self.current().encoder

    @property
    def thumbnails(self) -> Path | None:
        """Where thumbnails are cached
        (decided on first use: the store's cache, else the user's, else none)."""
        if not self._thumbnails:
            self._thumbnails.append(thumbnail_cache(self.path))
        return self._thumbnails[0]

    @property
    def store(self):
        return self.current().store

    # ---- validation -------------------------------------------------------------------------
    def check_k(self, k) -> int:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.limits.max_k:
            raise Invalid(f"k must be an integer from 1 to {self.limits.max_k}, got {describe(k)}")
        return k

    def check_query(self, q) -> str:
        if not isinstance(q, str):
            raise InvalidType(f"a query must be a string, got {describe(q)}")
        if not q.strip():
            raise PixdexError("empty query")
        if len(q) > self.limits.max_query_chars:
            raise TooLarge(f"query of {len(q):,} characters exceeds the "
                           f"{self.limits.max_query_chars:,} limit")
        return q

    def check_where(self, where) -> str | None:
        if where is not None and not isinstance(where, str):
            raise InvalidType(f"where must be a filter string, got {describe(where)}")
        return where or None

    def parse(self, q) -> Query:
        """A query string under this server's image policy: no paths; URLs only with allow_url_queries."""
        return parse_query(self.check_query(q), images="urls" if self.limits.allow_url_queries else "none")

    def fetch_images(self, queries: list[Query]) -> list[Query]:
        """Image URL terms fetched and decoded now, within the upload limits (never under the model lock)."""
        urls = [t.value for q in queries for t in q.terms if t.kind == "image" and isinstance(t.value, str)]
        if not urls:
            return queries
        if len(urls) > MAX_URL_TERMS:
            raise TooLarge(f"{len(urls)} image URLs in one request exceed the limit of {MAX_URL_TERMS}")
        images = {}
        for url in dict.fromkeys(urls):
            data = fetch_url(url, timeout=self.limits.url_timeout, max_bytes=self.limits.max_upload_bytes)
            images[url] = load_image_input(data, max_pixels=self.limits.max_image_pixels,
                                           option="--max-image-pixels")
        return [Query(tuple(Term(t.kind, images.get(t.value, t.value) if t.kind == "image" else t.value,
                                 t.weight)
                            for t in q.terms), label=q.label) for q in queries]

    # ---- search -----------------------------------------------------------------------------
    def check_order(self, sort, columns) -> dict:
        """sort: 'COLUMN' or '-COLUMN'; columns: names to attach to each hit (checked by the searcher)."""
        if sort is not None and not isinstance(sort, str):
            raise InvalidType(f"sort must be a column name (with '-' for descending), got {describe(sort)}")
        if columns is not None and (not isinstance(columns, list)
                                    or not all(isinstance(c, str) for c in columns)):
            raise InvalidType(f"columns must be a list of column names, got {describe(columns)}")
        return {"sort": sort or None, "columns": columns or None}

    def search(self, queries: list[str], k: int = 10, where: str | None = None,
               threshold: float | None = None, sort: str | None = None, columns=None) -> list[list[dict]]:
        k, where, order = self.check_k(k), self.check_where(where), self.check_order(sort, columns)
        if len(queries) > self.limits.max_queries:
            raise TooLarge(f"{len(queries)} queries exceed the limit of {self.limits.max_queries}")
        parsed = self.fetch_images([self.parse(q) for q in queries])
        snap = self.current()
        with self.model_lock:
            results = snap.search(parsed, k=k, where=where, threshold=threshold, **order)
        return [[h.to_dict() for h in hits] for hits in results]

    def search_image(self, image, k: int = 10, where: str | None = None, threshold: float | None = None,
                     sort: str | None = None, columns=None):
        k, where, order = self.check_k(k), self.check_where(where), self.check_order(sort, columns)
        snap = self.current()
        with self.model_lock:
            hits = snap.search_image(image, k=k, where=where, threshold=threshold, **order)
        return [h.to_dict() for h in hits]

    def search_body(self, body: dict) -> dict:
        """POST /api/search JSON: one of query (text or mix syntax), queries, id, embedding."""
        k = body.get("k", 10)
        where, threshold = body.get("where"), body.get("threshold")
        order = self.check_order(body.get("sort"), body.get("columns"))  # e.g. "-taken", ["taken"]
        if "queries" in body:
            qs = body["queries"]
            if not isinstance(qs, list) or not qs:
                raise Invalid("queries must be a non-empty list of strings")
            return {"queries": qs, "results": self.search(qs, k, where, threshold, **order)}
        if "query" in body:
            return {"query": body["query"],
                    "results": self.search([body["query"]], k, where, threshold, **order)[0]}
        if "id" in body:
            ident = check_id(body["id"])
            k, where = self.check_k(k), self.check_where(where)
            snap = self.current()
            self._require(snap, [ident])
            with self.model_lock:
                hits = snap.more_like(ident, k=k, where=where, threshold=threshold, **order)
            return {"id": ident, "results": [h.to_dict() for h in hits]}
        if "embedding" in body:
            vec = body["embedding"]
            if not isinstance(vec, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                    for x in vec):
                raise Invalid(f"embedding must be a list of {self.store.dim} numbers")
            k, where = self.check_k(k), self.check_where(where)
            snap = self.current()
            with self.model_lock:
                hits = snap.search_embedding(vec, k=k, where=where, threshold=threshold, **order)
            return {"results": [h.to_dict() for h in hits]}
        raise PixdexError("search body needs one of: query, queries, id, embedding")

    # ---- classify ---------------------------------------------------------------------------
    def check_labels(self, labels, template) -> tuple[list[str], str]:
        """The CLI's own checks (classify.prompts), with this server's bound on the number of labels."""
        labels = check_labels(labels, allow_duplicates=False, max_labels=self.limits.max_labels)
        return labels, check_template(DEFAULT_TEMPLATE if template is None else template)

    def classify_ids(self, ids, labels, template: str | None, top_k=None, examples=None,
                     suggest=None) -> dict:
        """Scores of stored ids; with `examples` ([{"label", "id"}]) by the labels they teach, and with
        `suggest` the N images worth labelling next (pixdex.server.teach)."""
        from pixdex.server import teach
        from pixdex.server.zero_shot import score_ids

        labels, template = self.check_labels(labels, template)
        top_k = None if top_k is None else TOP_K.check(top_k, "top_k")
        if not isinstance(ids, list) or not ids:
            raise Invalid("ids must be a non-empty list of stored ids")
        if len(ids) > self.limits.max_ids:
            raise TooLarge(f"{len(ids)} ids exceed the limit of {self.limits.max_ids}")
        ids = [check_id(i, "ids: id") for i in ids]
        snap = self.current()
        self._require(snap, ids)
        if examples is None and not suggest:
            with self.model_lock:
                return {"results": score_ids(self, snap.store, ids, labels, template, top_k)}
        plan, suggest = teach.plan(examples, labels, snap.store, suggest, self.limits.max_ids)
        with self.model_lock:
            return teach.teach_and_score(self.encoder, snap.store, ids, labels, template, top_k, plan,
                                         suggest)

    def classify_image(self, image, labels, template: str | None) -> dict:
        from pixdex.server.zero_shot import score_image

        labels, template = self.check_labels(labels, template)
        with self.model_lock:
            return {"labels": score_image(self, image, labels, template)}

    # ---- duplicates -------------------------------------------------------------------------
    def duplicates(self, threshold=None, tolerance=None, limit=None) -> dict:
        """Duplicate groups (search.duplicates), computed once per store state and settings,
        at most `limit`."""
        from indexer.params import (
            DEFAULT_DUP_THRESHOLD,
            DEFAULT_PIXEL_TOLERANCE,
            DUP_THRESHOLD,
            PIXEL_TOLERANCE,
        )
        from search.duplicates import find_duplicates

        threshold = DUP_THRESHOLD.check(DEFAULT_DUP_THRESHOLD if threshold is None else threshold,
                                        "threshold")
        tolerance = PIXEL_TOLERANCE.check(DEFAULT_PIXEL_TOLERANCE if tolerance is None else tolerance,
                                          "tolerance")
        limit = self.limits.max_k if limit is None else limit
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= self.limits.max_k:
            raise Invalid(f"limit must be an integer from 1 to {self.limits.max_k}, got {describe(limit)}")
        snap = self.current()
        key = (snap.store.manifest["generation"], threshold, tolerance)
        cache = self._duplicates
        if key not in cache:
            cache.clear()
            cache[key] = find_duplicates(snap, threshold=threshold, tolerance=tolerance).to_dict()
        report = dict(cache[key])
        report["groups"] = report["groups"][:limit]
        return report

    # ---- items ------------------------------------------------------------------------------
    @staticmethod
    def _require(snap: Searcher, ids: list[int]) -> None:
        try:
            snap.store.locate(np.array(ids, np.int64))
        except PixdexError as exc:
            raise NotFound(f"{str(exc).split(' in store ')[0]} "
                           f"(the store has {snap.store.count} items)") from None

    def item(self, item_id) -> dict:
        item_id = check_id(item_id)
        snap = self.current()
        self._require(snap, [item_id])
        return {k: _jsonable(v) for k, v in snap.store.item(item_id).items()}

    def file_item(self, item_id) -> dict:
        """item() with `path` as the OS names the file (a name that is not UTF-8 is stored escaped)."""
        item_id = check_id(item_id)
        snap = self.current()
        self._require(snap, [item_id])
        meta = snap.store.item(item_id)
        return {**meta, "path": snap.store.real_path(meta["path"])}

    def info(self) -> dict:
        store = self.current().store
        idx = store.index_info
        table = store.metadata()
        filters = {}
        for name in store.tag_sets():
            for col in table.column_names:
                if col == name or col.startswith(name + "_") and not col.endswith("score"):
                    values = [v for v in table[col].unique().to_pylist() if isinstance(v, str)]
                    if 0 < len(values) <= FILTER_VALUES_MAX:
                        filters[col] = sorted(values)
        return {"count": store.count, "dim": store.dim, "model": store.model["name"],
                "generation": store.manifest.get("generation"),
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
