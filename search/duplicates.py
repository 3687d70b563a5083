"""Duplicate finder: exact copies (same sha256) and near-duplicates of one photo, in groups with a keeper.

Two stages keep look-alikes out: (1) candidates from the store's FAISS index, every stored vector
searched for its neighbours above a cosine threshold (a batched k-NN with a radius, exact rescoring;
the cost grows like n searches of the index); (2) each candidate pair is checked at pixel level
(search.lookalike: aligned thumbnails, EXIF-orientation aware), which rejects different photos of
the same kind of scene. Pairs are joined into groups (union-find); each group suggests a keeper: the
largest resolution, then the earliest capture time. Nothing is ever deleted.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
from tqdm.auto import tqdm

from indexer.decode import DEFAULT_MAX_PIXELS
from indexer.errors import PixdexError
from indexer.params import DEFAULT_DUP_THRESHOLD, DUP_THRESHOLD, PIXEL_TOLERANCE
from indexer.store import Store
from search.lookalike import DEFAULT_TOLERANCE, DecodeError, Signature, distance, signature_of_bytes
from search.searcher import Searcher

DEFAULT_THRESHOLD = DEFAULT_DUP_THRESHOLD  # candidate cosine
NEIGHBOURS = 32  # neighbours looked at per item (groups larger than this still join through their members)
BATCH = 1024  # stored vectors searched per index call
PROBES = 8  # IVF lists visited per vector (near copies share a list, or sit in a neighbouring one)


@dataclass
class DupItem:
    """One file of a group, with what decides the keeper."""

    id: int
    path: str
    width: int
    height: int
    bytes: int
    sha256: str
    taken: str | None = None  # ISO 8601, with the UTC offset when known


@dataclass
class DupGroup:
    """Copies of one photo: the suggested keeper and the others (exact: all the same bytes)."""

    keeper: DupItem
    others: list[DupItem]
    kind: str  # exact | near
    score: float  # the lowest cosine of the pairs that joined the group (1.0 for exact copies)

    @property
    def items(self) -> list[DupItem]:
        return [self.keeper, *self.others]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "size": len(self.items),
            "score": round(self.score, 4),
            "keeper": asdict(self.keeper),
            "others": [asdict(o) for o in self.others],
        }


@dataclass
class DupReport:
    """What the finder did: the groups and the counts of each stage."""

    groups: list[DupGroup]
    threshold: float
    tolerance: float | None  # None: the pixel check was off (CLIP threshold only)
    items: int = 0
    exact_pairs: int = 0  # pairs of files with the same bytes
    candidates: int = 0  # pairs above the cosine threshold (other than exact copies)
    confirmed: int = 0  # candidates the pixel check took for the same photo
    rejected: int = 0  # look-alikes: candidates the pixel check took for different photos
    unchecked: int = 0  # candidates whose files could not be read (or changed since indexing): left out
    seconds: dict = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Files that are not keepers."""
        return sum(len(g.others) for g in self.groups)

    def pairs(self) -> set[tuple[int, int]]:
        """Every pair of ids that share a group (what the groups claim), as (smaller, larger)."""
        out = set()
        for g in self.groups:
            ids = sorted(i.id for i in g.items)
            out.update((a, b) for k, a in enumerate(ids) for b in ids[k + 1 :])
        return out

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "tolerance": self.tolerance,
            "items": self.items,
            "groups": [g.to_dict() for g in self.groups],
            "duplicates": self.duplicates,
            "exact_pairs": self.exact_pairs,
            "candidates": self.candidates,
            "confirmed": self.confirmed,
            "rejected": self.rejected,
            "unchecked": self.unchecked,
            "seconds": self.seconds,
        }

    def line(self) -> str:
        return (
            f"{len(self.groups)} groups, {self.duplicates} duplicates among {self.items} items "
            f"({self.exact_pairs} exact pairs; {self.candidates} candidate pairs above cosine "
            f"{self.threshold}: "
            f"{self.confirmed} confirmed, {self.rejected} look-alikes rejected, {self.unchecked} unchecked)"
        )


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def candidate_pairs(
    searcher: Searcher,
    threshold: float,
    neighbours: int = NEIGHBOURS,
    batch: int = BATCH,
    probes: int | None = PROBES,
    progress: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(a, b, cosine) arrays of pairs a < b with exact cosine >= threshold, a batch of stored vectors at once.

    Each vector's `neighbours` nearest come from the store's index (IVF visiting `probes` lists: copies sit
    close together, so a few lists find them), then all pairs of the batch are rescored at once.
    """
    store = searcher.store
    bar = tqdm(
        total=store.count,
        unit="vec",
        desc="candidates",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for ids, emb in store.iter_embeddings(batch):
        Q = emb.astype(np.float32)
        Q /= np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-12)
        nb, approx, slack = searcher.neighbour_candidates(Q, neighbours + 1, probes)
        rows, cols = np.nonzero((nb > ids[:, None]) & (approx >= threshold - slack))  # each pair once
        other = nb[rows, cols]
        vecs = store.vectors(other, cache=False) if len(other) else np.zeros((0, store.dim), np.float32)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        cos = np.einsum("ij,ij->i", Q[rows], vecs).astype(np.float64)  # exact scores of the few near pairs
        hit = cos >= threshold
        bar.update(len(ids))
        yield ids[rows[hit]], other[hit], cos[hit]
    bar.close()


def find_duplicates(
    store: str | os.PathLike | Store | Searcher,
    threshold: float = DEFAULT_THRESHOLD,
    tolerance: float | None = DEFAULT_TOLERANCE,
    neighbours: int = NEIGHBOURS,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> DupReport:
    """Groups of exact and near-duplicate images in a store (nothing is changed or deleted).

    threshold: cosine for candidates; tolerance: the pixel check's largest cell difference (0-255),
    None to skip the pixel check (every candidate counts: a CLIP-threshold-only finder, for comparison).
    """
    threshold = DUP_THRESHOLD.check(threshold, "threshold")
    if tolerance is not None:
        tolerance = PIXEL_TOLERANCE.check(tolerance, "tolerance")
    if not isinstance(neighbours, int) or isinstance(neighbours, bool) or not 1 <= neighbours <= 1024:
        raise PixdexError(f"neighbours must be a whole number from 1 to 1024, not {neighbours!r}")
    searcher = store if isinstance(store, Searcher) else Searcher(store)
    snap = searcher.store
    report = DupReport([], threshold, tolerance, items=snap.count)
    if snap.count == 0:
        return report
    t0 = time.perf_counter()
    items = _items(snap)
    uf = _UnionFind()
    low: dict[tuple[int, int], float] = {}
    by_sha: dict[str, int] = {}
    for it in items.values():
        first = by_sha.setdefault(it.sha256, it.id)
        if first != it.id:
            uf.union(first, it.id)
            report.exact_pairs += 1
    t1 = time.perf_counter()
    pairs: list[tuple[int, int, float]] = []
    for a, b, s in candidate_pairs(searcher, threshold, neighbours, progress=progress):
        for x, y, c in zip(a.tolist(), b.tolist(), s.tolist()):
            if items[x].sha256 != items[y].sha256:
                pairs.append((x, y, c))
    report.candidates = len(pairs)
    t2 = time.perf_counter()
    if tolerance is None:
        confirmed = pairs
    else:
        confirmed = _pixel_check(pairs, items, tolerance, max_pixels, report, progress)
    for x, y, c in confirmed:
        uf.union(x, y)
        low[(x, y)] = c
    report.confirmed = len(confirmed) if tolerance is not None else 0
    report.groups = _groups(uf, items, low)
    report.seconds = {
        "exact": round(t1 - t0, 3),
        "candidates": round(t2 - t1, 3),
        "pixel_check": round(time.perf_counter() - t2, 3),
    }
    return report


def _items(snap: Store) -> dict[int, DupItem]:
    meta = snap.metadata()
    cols = ["id", "path", "width", "height", "bytes", "sha256"]
    rows = meta.select(cols).to_pylist()
    taken = meta["taken"].to_pylist() if "taken" in meta.column_names else [None] * len(rows)
    offset = meta["taken_offset"].to_pylist() if "taken_offset" in meta.column_names else [None] * len(rows)
    out = {}
    for r, t, o in zip(rows, taken, offset):
        iso = t.isoformat() + (o or "") if isinstance(t, datetime) else None
        out[r["id"]] = DupItem(
            r["id"], r["path"], r["width"] or 0, r["height"] or 0, r["bytes"] or 0, r["sha256"], iso
        )
    return out


def _pixel_check(
    pairs, items: dict[int, DupItem], tolerance: float, max_pixels, report: DupReport, progress: bool
) -> list[tuple[int, int, float]]:
    """The candidate pairs whose images look the same photo (others counted as rejected or unchecked)."""
    needed = sorted({i for x, y, _ in pairs for i in (x, y)})
    sigs: dict[int, Signature | None] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        work = pool.map(lambda i: _signature(items[i], max_pixels), needed)
        for i, sig in tqdm(
            zip(needed, work),
            total=len(needed),
            unit="img",
            desc="pixel check",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        ):
            sigs[i] = sig
    out = []
    for x, y, c in pairs:
        a, b = sigs[x], sigs[y]
        if a is None or b is None:
            report.unchecked += 1
        elif distance(a, b) <= tolerance:
            out.append((x, y, c))
        else:
            report.rejected += 1
    return out


def _signature(item: DupItem, max_pixels) -> Signature | None:
    """The item's pixel signature from its file, only if the file still holds the indexed bytes."""
    path = item.path
    if not os.path.isabs(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != item.sha256:
        return None
    try:
        return signature_of_bytes(data, max_pixels)
    except DecodeError:
        return None


def _groups(uf: _UnionFind, items: dict[int, DupItem], low: dict[tuple[int, int], float]) -> list[DupGroup]:
    members: dict[int, set[int]] = {}
    for i in {*uf.parent, *uf.parent.values()}:  # roots appear as values only
        members.setdefault(uf.find(i), set()).add(i)
    score: dict[int, float] = {}
    for (x, _), c in low.items():
        r = uf.find(x)
        score[r] = min(score.get(r, 1.0), c)
    groups = []
    for root, ids in members.items():
        if len(ids) < 2:
            continue
        its = sorted((items[i] for i in ids), key=_keeper_order)
        kind = "exact" if len({i.sha256 for i in its}) == 1 else "near"
        groups.append(DupGroup(its[0], its[1:], kind, score.get(root, 1.0)))
    groups.sort(key=lambda g: (-len(g.items), g.keeper.id))
    return groups


def _keeper_order(item: DupItem):
    """Largest resolution first, then the earliest capture time (unknown last), the file size, the id."""
    return (-(item.width * item.height), item.taken is None, item.taken or "", -item.bytes, item.id)
