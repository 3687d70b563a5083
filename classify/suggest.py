"""Which images to label next: the ones the classifier is least sure about, spread over the collection.

Uncertainty sampling by margin (Scheffer et al. 2001: the gap between the two best labels; multi-label:
the gap between a label's score and its threshold), made diverse by clustering: k-means (FAISS) over a
sample of the stored embeddings cuts the collection into N regions and each suggestion comes from a
different region where possible (Zhdanov 2019, "Diverse mini-batch active learning").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from classify.scoring import top_k_block, unit_rows
from indexer.errors import PixdexError

MAX_SUGGEST = 1000
POOL_PER_SUGGESTION = 20  # the least certain 20*N images are the candidates
SAMPLE_PER_CLUSTER = 64  # k-means trains on about this many stored embeddings per cluster


@dataclass
class Suggestion:
    """A stored image worth labelling: its current best label(s) and how narrow the call is."""

    id: int
    path: str
    # single: score of the best label minus the second's; multi: |score - threshold| of the closest label
    margin: float
    label: str  # current best label (multi: the label nearest its threshold)
    runner_up: str | None  # single: the second label

    def to_dict(self) -> dict:
        return asdict(self)


def check_suggest(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_SUGGEST:
        raise PixdexError(f"--suggest must be an integer from 0 to {MAX_SUGGEST}, not {n!r}")
    return int(n)


def margins(store, head, mode: str, thresholds: np.ndarray | None, batch_rows: int = 4096):
    """(ids, margins, best label index, runner-up index or -1) of every live stored image."""
    w, bias = head.weights(mode)
    off = head.offsets(mode)
    ids, mg, best, second = [], [], [], []
    for block_ids, emb in store.iter_embeddings(batch_rows):
        if mode == "single":
            idx, sc = top_k_block(emb, w, head.scoring, 2, off)
            m = sc[:, 0] - sc[:, 1] if idx.shape[1] > 1 else sc[:, 0]
            b, r = idx[:, 0], idx[:, 1] if idx.shape[1] > 1 else np.full(len(idx), -1)
        else:
            z = unit_rows(emb) @ w + (off if off is not None else 0) + bias
            gap = np.abs(1.0 / (1.0 + np.exp(-z)) - thresholds[None, :])
            b = gap.argmin(axis=1)
            m, r = gap[np.arange(len(gap)), b], np.full(len(gap), -1)
        ids.append(block_ids)
        mg.append(np.asarray(m, np.float64))
        best.append(b)
        second.append(r)
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(mg), np.concatenate(best), np.concatenate(second)


def suggest_examples(store, head, n: int, mode: str = "single", thresholds: np.ndarray | None = None,
                     exclude=(), seed: int = 0) -> list[Suggestion]:
    """The n stored images (not in `exclude`) whose labels would help most, least certain first."""
    n = check_suggest(n)
    if n == 0 or store.count == 0:
        return []
    if mode == "multi" and thresholds is None:
        thresholds = np.full(len(head.labels), 0.5)
    ids, mg, best, second = margins(store, head, mode, thresholds)
    ok = ~np.isin(ids, np.asarray(list(exclude), np.int64))
    ids, mg, best, second = ids[ok], mg[ok], best[ok], second[ok]
    pool = np.argsort(mg, kind="stable")[: POOL_PER_SUGGESTION * n]
    chosen = spread(store, ids, pool, n, seed)
    paths = store.paths(ids[chosen])
    labels = head.labels
    return [Suggestion(int(ids[i]), p, float(mg[i]), labels[int(best[i])],
                       labels[int(second[i])] if second[i] >= 0 else None) for i, p in zip(chosen, paths)]


def spread(store, ids: np.ndarray, pool: np.ndarray, n: int, seed: int) -> list[int]:
    """Up to n positions of `pool` (ordered least certain first), one per k-means region where possible."""
    if len(pool) <= n:
        return pool.tolist()
    import faiss

    rng = np.random.default_rng(seed)
    all_ids = store.ids()
    sample = all_ids[rng.choice(len(all_ids), min(len(all_ids), SAMPLE_PER_CLUSTER * n), replace=False)]
    train = np.ascontiguousarray(unit_rows(store.vectors(np.sort(sample), cache=False)))
    km = faiss.Kmeans(train.shape[1], n, niter=20, seed=seed, verbose=False, spherical=True,
                      min_points_per_centroid=1)
    km.train(train)
    cand = np.ascontiguousarray(unit_rows(store.vectors(ids[pool], cache=False)))
    _, region = km.index.search(cand, 1)
    chosen, used = [], set()
    for pos, r in zip(pool.tolist(), region[:, 0].tolist()):
        if r not in used:
            used.add(r)
            chosen.append(pos)
    for pos in pool.tolist():  # fewer regions than n met in the pool: fill with the next least certain
        if len(chosen) >= n:
            break
        if pos not in chosen:
            chosen.append(pos)
    rank = {p: k for k, p in enumerate(pool.tolist())}
    return sorted(chosen[:n], key=rank.__getitem__)
