"""Query encoding: query terms (text, images, stored ids, raw embeddings) become one unit vector per query.

Text and image terms run on the ONNX fast paths (indexer.text_onnx / image_onnx, no torch) when the
store's model has a checked export, else on the transformers Encoder; stored items give their stored
vectors. Weighted +/- mixes are summed, then normalised.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from indexer.errors import InvalidType, InvalidValue, PixdexError
from indexer.ids import describe
from indexer.image_onnx import load_image_encoder
from indexer.inputs import input_bytes
from indexer.onnx_cache import CANNOT, fast_path_enabled, quick_start_preferred
from indexer.store import Store
from indexer.text_onnx import load_text_encoder
from search.query import Query

SMALL_BATCH = 8  # up to this many queries are encoded on one torch thread
# Up to this many stored items, reading their sha256 column to find a query image among them costs less than
# running a vision tower once (~0.05 s per 100,000 items; ViT-B/32's tower: ~0.08 s on 2 cores).
CHEAP_LOOKUP_ITEMS = 100_000


class QueryEncoder:
    """Encodes queries with one model: `model` (a name or an Encoder), or the store's own by default.

    The model is loaded on the first query that needs it and checked against the store it encodes for;
    id and embedding queries need no model. The store is passed to each call (snapshots change).
    """

    def __init__(self, model: Any = None, device: str = "auto"):
        self.model, self.device = model, device
        self._encoder = None
        self._fast: dict[str, Any] = {}  # tower -> ONNX encoder or None (looked up on first use)
        self._fast_missing: dict[str, str] = {}  # tower -> why it has no fast path (said once)

    @property
    def loaded(self):
        """The transformers Encoder if it was loaded already, else None."""
        return self._encoder

    def encoder(self, store: Store):
        """The transformers Encoder (loaded once per process), checked against the store's fingerprint."""
        if self._encoder is None:
            from indexer.encoder import store_encoder  # torch: only when a query needs the model

            self._encoder = store_encoder(store, self.model, self.device)
        else:
            store.check_model(self._encoder.info)
        return self._encoder

    def fast_encoder(self, store: Store, tower: str):
        """The ONNX query path of the store's own model for "text" or "image", or None: then that tower
        runs on transformers and a notice says why."""
        if tower not in self._fast:
            self._fast[tower] = None
            if self.model is None:
                load = load_text_encoder if tower == "text" else load_image_encoder
                fast, why = load(str(store.model.get("fingerprint", "")))
                if fast is not None and fast.dim == store.dim:
                    self._fast[tower] = fast
                else:
                    self._fast_missing[tower] = why or "export has another dimension"
        return self._fast[tower]

    def encode_texts(self, store: Store, texts: list[str]) -> np.ndarray:
        """Text query vectors: the fast path when the store's model has a checked export,
        else transformers."""
        fast = self.fast_encoder(store, "text")
        if fast is not None and fast.can_encode(texts):
            return fast.encode_texts(texts)
        with torch_threads(len(texts)):
            out = self.encoder(store).encode_texts(texts)
        self._notice(store, "text")
        return out

    def encode_images(self, store: Store, images: list[Any]) -> np.ndarray:
        """Image query vectors: a stored image's own vector when the query is a file (or upload) with the
        same bytes, else the fast path when the store's model has a checked export, else transformers."""
        stored = stored_images(store, images) if self._lookup_pays(store) else {}
        if not stored:
            return self._encode_images(store, images)
        out = np.zeros((len(images), store.dim), np.float32)
        rows = sorted(stored)
        out[rows] = normalise(store.vectors(np.array([stored[i] for i in rows], np.int64)))
        rest = [i for i in range(len(images)) if i not in stored]
        if rest:
            out[rest] = self._encode_images(store, [images[i] for i in rest])
        return out

    def _lookup_pays(self, store: Store) -> bool:
        """Look query images up among the stored ones (stored_images) when that is cheaper than encoding
        them: its table is read already or small; a long-lived process reads it once per snapshot; a
        one-shot query on a big store only when the alternative is transformers (seconds)."""
        if not fast_path_enabled():
            return False
        if store.content_table_loaded or store.count <= CHEAP_LOOKUP_ITEMS or not quick_start_preferred():
            return True
        return self.fast_encoder(store, "image") is None

    def _encode_images(self, store: Store, images: list[Any]) -> np.ndarray:
        fast = self.fast_encoder(store, "image")
        if fast is not None:
            return fast.encode_images(images)
        with torch_threads(len(images)):
            out = self.encoder(store).encode_images(images)
        self._notice(store, "image")
        return out

    def _notice(self, store: Store, tower: str) -> None:
        """Once: one line on why a tower ran on transformers; a missing text export is written now
        (seconds) so the next process starts fast; image exports are left to `pixdex index` (minutes)."""
        why = self._fast_missing.pop(tower, "")
        if not why:
            return
        log = logging.getLogger("pixdex.search")
        if tower == "image" or CANNOT in why or "PIXDEX_FAST" in why or "not installed" in why:
            hint = "; `pixdex index` writes it" if tower == "image" and "no fast" in why else ""
            log.warning("pixdex: %s queries ran on transformers: %s%s", tower, why, hint)
            return
        from indexer.onnx_export import ensure_export

        if self.encoder(store).fingerprint != store.model["fingerprint"]:  # exports are found by the store's
            log.warning("pixdex: text queries ran on transformers (%s); run `pixdex index` once to record "
                        "this model's current fingerprint in the store (an older store)", why)
            return
        log.warning("pixdex: text queries ran on transformers (%s); "
                    "writing the text export for next time", why)
        try:
            ensure_export(self.encoder(store), "text")
        except Exception as exc:  # the query has its answer; the export is only an offer
            log.warning("pixdex: could not write the fast text export: %s", str(exc).splitlines()[0][:200])

    def encode(self, store: Store, queries: Sequence[Query], template: str | None,
               id_for_path: Callable[[str], int]) -> np.ndarray:
        """Query vectors (float32, L2-normalised), one row per query; encoders run once per batch."""
        texts: dict[str, int] = {}
        images: dict[Any, int] = {}
        image_list: list[Any] = []
        ids: dict[int, int] = {}
        for q in queries:
            for t in q.terms:
                if t.kind == "text":
                    texts.setdefault(apply_template(t.value, template), len(texts))
                elif t.kind == "image":
                    key = t.value if isinstance(t.value, str) else id(t.value)
                    if key not in images:
                        images[key] = len(image_list)
                        image_list.append(t.value)
                elif t.kind in ("id", "like"):
                    ident = t.value if t.kind == "id" else id_for_path(t.value)
                    ids.setdefault(ident, len(ids))
        dim = store.dim
        text_emb = self.encode_texts(store, list(texts)) if texts else None
        image_emb = self.encode_images(store, image_list) if image_list else None
        id_emb = normalise(store.vectors(np.array(list(ids), np.int64))) if ids else None
        out = np.zeros((len(queries), dim), np.float32)
        for row, q in enumerate(queries):
            v = np.zeros(dim, np.float64)
            for t in q.terms:
                if t.kind == "text":
                    e = text_emb[texts[apply_template(t.value, template)]]
                elif t.kind == "image":
                    e = image_emb[images[t.value if isinstance(t.value, str) else id(t.value)]]
                elif t.kind in ("id", "like"):
                    e = id_emb[ids[t.value if t.kind == "id" else id_for_path(t.value)]]
                else:
                    e = check_embedding(t.value, dim)
                v += t.weight * e
            norm = np.linalg.norm(v)
            if norm < 1e-6:
                raise PixdexError(f"query {q.label!r} cancels out to a zero vector")
            out[row] = v / norm
        return out


def stored_images(store: Store, images: Sequence[Any]) -> dict[int, int]:
    """Query images (files, uploaded bytes) byte-identical to a stored image -> that item's id: its stored
    vector is the embedding the model gives these bytes, so no model has to load (a cold image query on a
    ViT-L/14 store then costs what an `id:` query does). See QueryEncoder._lookup_pays for when."""
    digests: dict[int, str] = {}
    for i, item in enumerate(images):
        data = _local_bytes(item)
        if data is not None:
            digests[i] = hashlib.sha256(data).hexdigest()
    if not digests:
        return {}
    ids = store.ids_with_content(digests.values())
    return {i: ids[d] for i, d in digests.items() if d in ids}


def _local_bytes(item: Any) -> bytes | None:
    """The bytes of a query image that is not a URL or a PIL image (a file, an upload, base64); None when
    they cannot be read (the encoder then reports why)."""
    if isinstance(item, str) and item.startswith(("http://", "https://")) or isinstance(item, Image.Image):
        return None
    try:
        return input_bytes(item)[0]
    except PixdexError:
        return None


def as_embeddings(vectors: Any, dim: int) -> np.ndarray:
    """A 1-d vector or a 2-d batch of `dim` finite numbers as float32 (clear errors, not numpy's)."""
    try:
        arr = np.asarray(vectors)
    except (TypeError, ValueError, OverflowError):  # ragged nesting, odd objects
        arr = None
    if arr is None or arr.dtype.kind not in "iuf" or arr.ndim not in (1, 2):
        got = describe(vectors) if arr is None or arr.ndim == 0 else f"{arr.ndim}-d {arr.dtype} data"
        raise InvalidType(f"an embedding must be a list of {dim} numbers "
                          f"(or a batch of such lists), got {got}")
    if arr.shape[-1] != dim:
        raise InvalidValue(f"embedding has {arr.shape[-1]} dimensions; the store's model gives {dim}")
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InvalidValue("embedding must hold finite numbers")
    return arr


def apply_template(text: str, template: str | None) -> str:
    """The query text put into a prompt template such as 'a photo of {}'."""
    if not template:
        return text
    if "{}" not in template:
        raise PixdexError(f"template {template!r} needs {{}} where the query text goes, "
                          "e.g. 'a photo of {}'")
    return template.replace("{}", text)


def normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def check_embedding(v: Any, dim: int) -> np.ndarray:
    """One raw embedding term: `dim` finite numbers, not all zero, normalised."""
    v = np.asarray(v, np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise PixdexError(f"embedding has {v.shape[0]} dimensions; the store's model gives {dim}")
    if not np.isfinite(v).all() or np.linalg.norm(v) == 0:
        raise PixdexError("embedding must be finite and non-zero")
    return normalise(v)


_THREADS_LOCK = threading.Lock()


@contextmanager
def torch_threads(n_items: int):
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
