"""Search hits: candidates rescored exactly into ranked results (threshold, near-duplicates, k)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from indexer.errors import PixdexError
from indexer.store import Store, sorted_unique


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


def rescore(store: Store, q: np.ndarray, cand: np.ndarray, threshold, dedup, k):
    """Exact rescoring of candidates: (ids, scores, lowest candidate score), best first, ties by id."""
    ids = sorted_unique(np.asarray(cand, np.int64))
    if not len(ids):
        return ids, np.zeros(0), -np.inf
    vecs = store.vectors(ids).astype(np.float64)
    scores = vecs @ q.astype(np.float64)
    order = np.lexsort((ids, -scores))
    ids, scores, vecs = ids[order], scores[order], vecs[order]
    lowest = float(scores[-1])
    if threshold is not None:
        keep = scores >= threshold
        ids, scores, vecs = ids[keep], scores[keep], vecs[keep]
    if dedup is not None and len(ids) > 1:
        keep = dedup_positions(vecs, dedup, k)
        ids, scores = ids[keep], scores[keep]
    if k is not None:
        ids, scores = ids[:k], scores[:k]
    return ids, scores, lowest


def dedup_positions(vecs: np.ndarray, threshold: float, k: int | None) -> np.ndarray:
    """Positions kept when dropping items within `threshold` cosine of a better-ranked kept item."""
    kept: list[int] = []
    for i in range(len(vecs)):
        if kept and float(np.max(vecs[kept] @ vecs[i])) >= threshold:
            continue
        kept.append(i)
        if k is not None and len(kept) >= k:
            break
    return np.array(kept, dtype=np.int64)


def rerank(hits: list[Hit]) -> list[Hit]:
    """Ranks 1..n in list order (after hits were dropped or reordered)."""
    for r, h in enumerate(hits):
        h.rank = r + 1
    return hits
