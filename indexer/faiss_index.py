"""FAISS index choice, build, recall measurement and search-parameter tuning.

All indexes use inner product on L2-normalised vectors (= cosine) and carry the store's ids.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.params import INDEX_TYPES

SHARDED_REQUEST_TYPES = ("sharded", "sharded-parts")  # built by indexer.sharded_index (on disk / as parts)
SHARDED_TYPES = ("ivfpq-ondisk", "ivfpq-parts")  # the index types those builds record in the manifest
EXACT_LIMIT = 100_000  # below this, exact search costs a few ms: no reason to approximate
HNSW_LIMIT = 2_000_000  # above this, HNSW's build time and link memory stop paying off
HNSW_M = 32
TARGET_RECALL = 0.95
MIN_PQ_TRAIN = 16 * 39  # 4-bit PQ codebooks (16 centroids) need ~39 points each


@dataclass(frozen=True)
class IndexSpec:
    """What to build: the FAISS factory string plus its parameters and the reasoning."""

    type: str  # flat | hnsw | ivf | ivfpq
    factory: str
    nlist: int = 0
    pq_m: int = 0
    reason: str = ""


def bytes_per_vector(index_type: str, dim: int, pq_m: int = 0) -> int:
    """Approximate memory per stored vector for each index type (ids included)."""
    return {
        "flat": 4 * dim + 8,
        "hnsw": 4 * dim + 8 + HNSW_M * 2 * 4,
        "ivf": 4 * dim + 8,
        "ivfpq": pq_m + 8,
    }[index_type]


def choose_index(n: int, dim: int, max_memory: int | None = None, index_type: str = "auto") -> IndexSpec:
    """Pick an index the way autofaiss reasons, within a memory budget (bytes; None = no limit).

    - fewer than 100k vectors and they fit: Flat. Exact search over 100k x 512 takes a few ms.
    - up to 2M vectors and full vectors + HNSW links fit: HNSW32 (best recall/latency, no training,
      cheap adds; removals force a rebuild).
    - more, and full vectors fit: IVF-Flat with nlist ~ 4*sqrt(n) (fast build, memory-mappable).
    - full vectors do not fit the budget: IVF-PQ with the largest code (bytes/vector) that fits,
      nlist ~ 4*sqrt(n); recall is measured after the build and recorded.
    nlist is capped at n/39 so every list gets ~39 training points. A type other than auto is
    honoured as asked (flat/hnsw/ivf/ivfpq) with sizes chosen the same way; ivfpq needs at least
    MIN_PQ_TRAIN vectors to train its codebooks and falls back to IVF-Flat below that.
    """
    if index_type not in INDEX_TYPES or index_type in SHARDED_REQUEST_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    nlist = default_nlist(n)
    budget = max_memory or float("inf")
    if index_type == "auto":
        if n < EXACT_LIMIT and n * bytes_per_vector("flat", dim) <= budget:
            return IndexSpec("flat", "Flat",
                             reason=f"{n} vectors < {EXACT_LIMIT}: exact search is fast enough")
        if n <= HNSW_LIMIT and n * bytes_per_vector("hnsw", dim) <= budget:
            return IndexSpec("hnsw", f"HNSW{HNSW_M}", reason=f"{n} vectors fit in memory: HNSW{HNSW_M}")
        if n * bytes_per_vector("ivf", dim) <= budget:
            why = f"{n} vectors > {HNSW_LIMIT}" if n > HNSW_LIMIT else "HNSW links exceed the memory budget"
            return IndexSpec("ivf", f"IVF{nlist},Flat", nlist, reason=f"{why}: IVF-Flat")
        index_type = "ivfpq"
    if index_type == "flat":
        return IndexSpec("flat", "Flat", reason="asked for flat")
    if index_type == "hnsw":
        return IndexSpec("hnsw", f"HNSW{HNSW_M}", reason="asked for hnsw")
    if index_type == "ivfpq" and n >= MIN_PQ_TRAIN:
        m = pq_code_size(dim, n, budget)
        nbits = pq_bits(n)
        code = f"PQ{m}" if nbits == 8 else f"PQ{m}x{nbits}"
        return IndexSpec("ivfpq", f"IVF{nlist},{code}", nlist, m,
                         reason=f"{code}: about {m * nbits // 8 + 8} bytes/vector, within the memory budget")
    why = ("asked for ivf" if index_type == "ivf"
           else f"ivfpq needs >= {MIN_PQ_TRAIN} vectors to train; IVF-Flat instead")
    return IndexSpec("ivf", f"IVF{nlist},Flat", nlist, reason=why)


def default_nlist(n: int) -> int:
    """IVF lists for n vectors: ~4*sqrt(n) (autofaiss's rule), capped at n/39 so each centroid
    trains on ~39."""
    nlist = max(1, min(65536, int(4 * math.sqrt(max(n, 1)))))
    return max(1, min(nlist, n // 39 or 1))


def pq_code_size(dim: int, n: int, budget: float) -> int:
    """Largest PQ code (bytes per vector) dividing dim that fits the budget, at most dim/2."""
    options = [m for m in (128, 96, 64, 48, 32, 24, 16, 8, 4) if dim % m == 0 and m <= dim // 2]
    for m in options:
        if n * (m + 8) <= budget:
            return m
    return options[-1] if options else 1


def pq_bits(n: int) -> int:
    """Bits per PQ sub-code: 8 (256 centroids) when n allows ~39 training points per centroid, else fewer."""
    return int(min(8, max(4, math.floor(math.log2(max(n, 1) / 39)))))


def new_index(spec: IndexSpec, dim: int):
    """An empty FAISS index for spec (inner product); Flat/HNSW are wrapped in IDMap2 to carry store ids."""
    import faiss

    inner = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.type == "hnsw":
        inner.hnsw.efConstruction = 80
    if spec.type == "ivfpq":  # polysemous codes only help Hamming pre-filtering, and their training is slow
        faiss.downcast_index(faiss.extract_index_ivf(inner)).do_polysemous_training = False
    return inner if spec.type.startswith("ivf") else faiss.IndexIDMap2(inner)


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec, train_sample: int = 200_000,
                seed: int = 0):
    """A trained FAISS index holding `vectors` under `ids` (in-memory arrays; see index_build for stores)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_index(spec, vectors.shape[1])
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = (vectors if len(vectors) <= train_sample
                  else vectors[rng.choice(len(vectors), train_sample, False)])
        index.train(sample)
    if len(vectors):
        index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
    return index


def ivf_of(index):
    """The IVF part of an index (or None)."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index):
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return getattr(inner, "hnsw", None)


def index_family(index_type: str | None) -> str | None:
    """How an index type searches: sharded IVF-PQ builds (on-disk or parts) behave as ivfpq."""
    return "ivfpq" if index_type in SHARDED_TYPES else index_type


def apply_search_params(index, params: dict) -> None:
    """Set nprobe / efSearch as recorded in the manifest (on every part of an IndexShards)."""
    import faiss

    if isinstance(index, faiss.IndexShards):
        for i in range(index.count()):
            apply_search_params(index.at(i), params)
        return
    if "nprobe" in params and (ivf := ivf_of(index)) is not None:
        ivf.nprobe = int(params["nprobe"])
    if "efSearch" in params and (h := hnsw_of(index)) is not None:
        h.efSearch = int(params["efSearch"])


def exact_search(batches: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k by inner product over (ids, vectors) batches, in bounded memory: (scores, ids),
    each [queries, k], best first, padded with -inf / -1 when fewer items exist. The one exact top-k
    that index tuning, the sharded build and the Searcher's exact fallback share."""
    import faiss

    queries = np.ascontiguousarray(queries, np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for ids, vecs in batches:
        if not len(vecs):
            continue
        dist, pos = faiss.knn(queries, np.ascontiguousarray(vecs, np.float32), min(k, len(vecs)),
                              metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(dist, np.where(pos >= 0, np.asarray(ids, np.int64)[np.maximum(pos, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


def exact_top_k_ids(batches: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
                    k: int) -> np.ndarray:
    """Ids of the exact top-k by inner product over (ids, vectors) batches (see exact_search)."""
    return exact_search(batches, queries, k)[1]


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the exact top-k by inner product over in-memory vectors (see exact_search)."""
    return exact_search([(np.arange(len(vectors)), vectors)], queries, k)[1]


def noisy_queries(vectors: np.ndarray, seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """Stored vectors with a little noise, renormalised: queries that look like near-duplicate lookups."""
    rng = np.random.default_rng(seed)
    q = np.asarray(vectors, np.float32) + rng.normal(0, noise, vectors.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the true top-k ids that the approximate search returned."""
    hits = sum(len(set(f.tolist()) & (set(t.tolist()) - {-1})) for f, t in zip(found, truth))
    return hits / max(1, sum(len(set(t.tolist()) - {-1}) for t in truth))


@dataclass
class TuneResult:
    """The search parameter chosen for an index and the recall@10 it reached."""

    params: dict
    recall_at_10: float  # of the index's own ranking
    search_ms: float  # mean per query at the chosen setting, batch of sample queries
    rescored_recall_at_10: float | None = None  # PQ: true top-10 found among the candidates search re-scores


def rescore_depth(k: int) -> int:
    """Candidates the Searcher re-scores exactly for a PQ index (its coarse scores misorder neighbours)."""
    return 4 * k + 40


def tune_params(index, queries: np.ndarray, truth: np.ndarray, spec: IndexSpec,
                target: float = TARGET_RECALL) -> TuneResult:
    """Smallest nprobe/efSearch whose recall@10 against `truth` reaches target (or the best found).

    For IVF-PQ the recall that counts is the Searcher's: the true top-10 among the rescore_depth(10)
    candidates it re-scores exactly, so nprobe is tuned on that (the raw ranking's recall is recorded too).
    """
    k = truth.shape[1]
    if spec.type == "flat":
        return TuneResult({}, 1.0, 0.0)
    if spec.type == "hnsw":
        name, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        nlist = spec.nlist or ivf_of(index).nlist
        name, values = "nprobe", sorted({v for v in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, nlist]
                                         if v <= nlist})
    rescored = index_family(spec.type) == "ivfpq"
    depth = rescore_depth(k) if rescored else k
    best, best_key = None, -1.0
    for v in values:
        apply_search_params(index, {name: v})
        t0 = time.perf_counter()
        found = index.search(queries, depth)[1]
        ms = (time.perf_counter() - t0) * 1000 / len(queries)
        r = recall_at_k(found[:, :k], truth)
        key = recall_at_k(found, truth) if rescored else r
        if key > best_key or key >= target:
            best, best_key = TuneResult({name: v}, r, ms, key if rescored else None), key
        if key >= target:
            break
    apply_search_params(index, best.params)
    return best


# ---- opening ----------------------------------------------------------------------------------
@contextlib.contextmanager
def faiss_chatter_to_stderr() -> Iterator[None]:
    """Send what FAISS's C++ code prints to stdout (on-disk list notices) to stderr,
    so --json output stays clean."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def read_sharded(folder: Path, info: dict, dim: int):
    """Open a sharded build's index from its manifest record: the merged on-disk one, or the parts as one
    IndexShards (memory-mapped, read-only)."""
    import faiss

    if info["type"] == SHARDED_TYPES[0]:  # merged: inverted lists in the .ivfdata file beside the index
        with faiss_chatter_to_stderr():
            return faiss.read_index(str(folder / info["file"]), faiss.IO_FLAG_ONDISK_SAME_DIR)
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
    shards = faiss.IndexShards(dim, True, False)  # threaded, ids kept as stored
    for name in info["files"]:
        shards.add_shard(faiss.read_index(str(folder / name), flag))
    return shards
