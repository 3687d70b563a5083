"""FAISS index choice, build, recall measurement and search-parameter tuning.

All indexes use inner product on L2-normalised vectors (= cosine) and carry the store's ids.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
EXACT_LIMIT = 100_000  # below this, exact search costs a few ms: no reason to approximate
HNSW_LIMIT = 2_000_000  # above this, HNSW's build time and link memory stop paying off
HNSW_M = 32
TARGET_RECALL = 0.95


@dataclass(frozen=True)
class IndexSpec:
    """What to build: the FAISS factory string plus its parameters and the reasoning."""

    type: str  # flat | hnsw | ivf | ivfpq
    factory: str
    nlist: int = 0
    pq_m: int = 0
    reason: str = ""


def bytes_per_vector(kind: str, dim: int, pq_m: int = 0) -> int:
    """Approximate memory per stored vector for each index type (ids included)."""
    return {
        "flat": 4 * dim + 8,
        "hnsw": 4 * dim + 8 + HNSW_M * 2 * 4,
        "ivf": 4 * dim + 8,
        "ivfpq": pq_m + 8,
    }[kind]


def choose_index(n: int, dim: int, max_memory: int | None = None, kind: str = "auto") -> IndexSpec:
    """Pick an index the way autofaiss reasons, within a memory budget (bytes; None = no limit).

    - fewer than 100k vectors: Flat. Exact search over 100k x 512 takes a few ms; nothing to gain.
    - up to 2M vectors and full vectors fit: HNSW32 (best recall/latency; no training; adds are cheap).
    - more, and full vectors fit: IVF-Flat with nlist ~ 4*sqrt(n) (fast build, memory-mappable).
    - full vectors do not fit the budget: IVF-PQ with the largest code (bytes/vector) that fits,
      nlist ~ 4*sqrt(n); recall is measured after the build and recorded.
    A type other than auto is honoured as asked (flat/hnsw/ivf/ivfpq) with sizes chosen the same way.
    """
    nlist = max(1, min(65536, int(4 * math.sqrt(max(n, 1)))))
    # IVF needs ~39 training points per list; small collections get fewer lists
    nlist = max(1, min(nlist, n // 39 or 1))
    budget = max_memory or float("inf")
    if kind == "auto":
        if n < EXACT_LIMIT and n * bytes_per_vector("flat", dim) <= budget:
            return IndexSpec("flat", "Flat", reason=f"{n} vectors < {EXACT_LIMIT}: exact search is fast enough")
        if n <= HNSW_LIMIT and n * bytes_per_vector("hnsw", dim) <= budget:
            return IndexSpec("hnsw", f"HNSW{HNSW_M}", reason=f"{n} vectors fit in memory: HNSW{HNSW_M}")
        if n * bytes_per_vector("ivf", dim) <= budget:
            return IndexSpec("ivf", f"IVF{nlist},Flat", nlist, reason=f"{n} vectors > {HNSW_LIMIT}: IVF-Flat")
        kind = "ivfpq"
    if kind == "flat":
        return IndexSpec("flat", "Flat", reason="asked for flat")
    if kind == "hnsw":
        return IndexSpec("hnsw", f"HNSW{HNSW_M}", reason="asked for hnsw")
    if kind == "ivf":
        return IndexSpec("ivf", f"IVF{nlist},Flat", nlist, reason="asked for ivf")
    if kind == "ivfpq":
        m = pq_code_size(dim, n, budget)
        return IndexSpec("ivfpq", f"IVF{nlist},PQ{m}", nlist, m, reason=f"PQ{m}: {m + 8} bytes/vector fits the budget")
    raise ValueError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")


def pq_code_size(dim: int, n: int, budget: float) -> int:
    """Largest PQ code (bytes per vector) dividing dim that fits the budget, at most dim/2."""
    options = [m for m in (128, 96, 64, 48, 32, 24, 16, 8, 4) if dim % m == 0 and m <= dim // 2]
    for m in options:
        if n * (m + 8) <= budget:
            return m
    return options[-1] if options else 4


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec, train_sample: int = 200_000, seed: int = 0):
    """A trained FAISS index holding `vectors` under `ids`."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    inner = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.type == "hnsw":
        inner.hnsw.efConstruction = 80
    index = inner if spec.type.startswith("ivf") else faiss.IndexIDMap2(inner)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors if len(vectors) <= train_sample else vectors[rng.choice(len(vectors), train_sample, False)]
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


def apply_search_params(index, params: dict) -> None:
    """Set nprobe / efSearch as recorded in the manifest."""
    if "nprobe" in params and (ivf := ivf_of(index)) is not None:
        ivf.nprobe = int(params["nprobe"])
    if "efSearch" in params and (h := hnsw_of(index)) is not None:
        h.efSearch = int(params["efSearch"])


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the exact top-k by inner product (ties by position)."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, np.float32))
    return flat.search(np.ascontiguousarray(queries, np.float32), k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist()) - {-1}) for f, t in zip(found, truth))
    return hits / max(1, sum(len(set(t.tolist()) - {-1}) for t in truth))


@dataclass
class TuneResult:
    params: dict
    recall_at_10: float
    search_ms: float  # mean per query at the chosen setting, batch of sample queries


def tune(index, vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec, n_queries: int = 200,
         target: float = TARGET_RECALL, seed: int = 0) -> TuneResult:
    """Smallest nprobe/efSearch reaching recall@10 >= target against exact search (or the best found).

    Queries are stored vectors with a little noise, so they look like real near-duplicate lookups.
    """
    k = 10
    n = len(vectors)
    rng = np.random.default_rng(seed)
    pick = rng.choice(n, min(n_queries, n), replace=False)
    q = vectors[pick].astype(np.float32) + rng.normal(0, 0.02, (len(pick), vectors.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = ids[exact_top_k(vectors, q, min(k, n))]
    if spec.type == "flat":
        return TuneResult({}, 1.0, 0.0)
    if spec.type == "hnsw":
        name, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        nlist = ivf_of(index).nlist
        name, values = "nprobe", sorted({v for v in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, nlist] if v <= nlist})
    best = None
    for v in values:
        apply_search_params(index, {name: v})
        t0 = time.perf_counter()
        found = index.search(q, min(k, n))[1]
        ms = (time.perf_counter() - t0) * 1000 / len(q)
        r = recall_at_k(found, truth)
        best = TuneResult({name: v}, r, ms)
        if r >= target:
            break
    return best


def index_record(spec: IndexSpec, tuned: TuneResult, ntotal: int) -> dict:
    """The manifest's description of a built index."""
    return {**asdict(spec), "params": tuned.params, "recall_at_10": round(tuned.recall_at_10, 4),
            "search_ms_per_query": round(tuned.search_ms, 4), "ntotal": ntotal}
