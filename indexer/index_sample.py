"""Samples of a store's vectors for its FAISS index: training points, and recall-measuring queries."""

from __future__ import annotations

import numpy as np

from indexer.faiss_index import exact_top_k_ids, noisy_queries
from indexer.store import Store

TUNE_QUERIES = 200
BATCH_ROWS = 65_536  # rows per batch when streaming a store's embeddings


def sample_ids(snap: Store, rows: int, seed: int) -> np.ndarray:
    """Up to `rows` live ids picked at random, sorted (so shards are read in order)."""
    ids = snap.ids()
    return np.sort(np.random.default_rng(seed).choice(ids, min(rows, len(ids)), replace=False))


def train_on_sample(index, snap: Store, rows: int, seed: int = 0) -> None:
    """Train an IVF / PQ index on up to `rows` stored vectors picked at random."""
    index.train(snap.vectors(sample_ids(snap, rows, seed), cache=False))


def recall_sample(snap: Store, index_type: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy stored vectors as queries and their exact top-10 ids (empty for flat: it is exact)."""
    if index_type == "flat" or not snap.count:
        return np.zeros((1, snap.dim), np.float32), np.zeros((1, 0), np.int64)
    queries = noisy_queries(snap.vectors(sample_ids(snap, TUNE_QUERIES, seed), cache=False), seed)
    return queries, exact_top_k_ids(snap.iter_embeddings(BATCH_ROWS), queries, min(10, snap.count))
