"""Sharded IVF-PQ builds for stores too large to index in one process: train, fill parts, merge on disk.

An IVF-PQ is trained on a sample; runs of the store's embedding shards are added to copies of it in
parallel tasks (processes here, Ray tasks with ``--engine ray``), each writing an index *part*; the
parts' inverted lists are then merged by FAISS's ``merge_ondisk`` into one ``.ivfdata`` file that the
index file names. It is opened with ``IO_FLAG_ONDISK_SAME_DIR`` (the file is looked up beside the
index, so a copied or moved store keeps working) and searched straight from the page cache. Kept
unmerged (``merge=False``), the parts are memory-mapped and searched together as one ``IndexShards``.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from indexer.atomic import write_atomic
from indexer.faiss_index import (
    SHARDED_TYPES,
    IndexSpec,
    default_nlist,
    faiss_chatter_to_stderr,
    new_index,
    pq_bits,
    tune_params,
)
from indexer.index_sample import recall_sample, train_on_sample
from indexer.store import Store, StoreWriter
from indexer.store_format import IndexRecord, index_file, index_part_file, ivfdata_file, temporary_file

ONDISK, PARTS = SHARDED_TYPES  # one index file + one .ivfdata file / part files searched as IndexShards
DEFAULT_MEMORY = 4 << 30  # bytes a sharded build may use when no --max-index-memory is given
PROCESS_BASE = 256 << 20  # a worker's Python, numpy, pyarrow and FAISS before any data
ADD_BATCH = 65_536  # rows per add_with_ids call (float32 copy of one batch: 128 MiB at 512 dims)


@dataclass(frozen=True)
class ShardedPlan:
    """How a sharded build will run: the index, its training sample, the parts and the memory they take."""

    spec: IndexSpec
    train_rows: int
    parts: list[list[int]]  # store shard numbers held by each part, in order
    workers: int
    add_batch: int
    memory_per_worker: int  # bytes: coarse centroids + one float32 batch + the part's codes and ids
    memory_budget: int
    reason: str


def plan_sharded(shard_rows: Sequence[int], dim: int, max_memory: int | None = None,
                 workers: int | None = None, nlist: int | None = None,
                 pq_m: int | None = None) -> ShardedPlan:
    """Choose the sharded IVF-PQ and how to split its build so every process stays within the budget.

    - nlist ~ 4*sqrt(n) (as choose_index), capped at n/39 so each centroid trains on ~39 points.
    - PQ code: dim/8 bytes (64 for 512 dims; at least 16 or dim/2 for small dims), 8-bit (fewer bits
      below ~10k vectors, as pq_bits): ~72 bytes/vector with its id, recall restored
      at query time by exact re-scoring from the stored embeddings.
    - training sample: 39 points per centroid (at least 256*39 for the PQ codebooks), at most a
      quarter of the budget as float32.
    - parts: consecutive runs of shards, each small enough that the process itself (~256 MiB), the
      centroids, one float32 batch (x3 for residuals) and twice the part's codes (inverted lists
      grow by doubling) fit budget/workers; at least one part per worker so every core is used.
    """
    n = int(sum(shard_rows))
    budget = int(max_memory or DEFAULT_MEMORY)
    workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
    if nlist is None:
        nlist = default_nlist(n)
    m = pq_m or max(dim // 8, min(dim // 2, 16), 1)
    while dim % m:
        m -= 1
    nbits = pq_bits(n)
    code = m * nbits // 8 + 8
    train_rows = min(n, max(39 * nlist, 256 * 39), max(1, budget // 4 // (4 * dim)))
    add_batch = max(1024, min(ADD_BATCH, budget // 8 // workers // (4 * dim * 3)))
    fixed = PROCESS_BASE + nlist * dim * 4 + add_batch * dim * 4 * 3
    per_part = max(1, (budget // workers - fixed) // (2 * code))  # inverted lists grow by doubling
    want = max(workers, math.ceil(n / per_part)) if n else 1
    target = max(1, math.ceil(n / want))
    parts: list[list[int]] = [[]]
    rows_in = 0
    for k, rows in enumerate(shard_rows):
        if parts[-1] and rows_in + rows > target:
            parts.append([])
            rows_in = 0
        parts[-1].append(k)
        rows_in += rows
    biggest = max((sum(shard_rows[k] for k in p) for p in parts), default=0)
    pq = f"PQ{m}" if nbits == 8 else f"PQ{m}x{nbits}"
    spec = IndexSpec(ONDISK, f"IVF{nlist},{pq}", nlist, m,
                     reason=f"sharded build: {len(parts)} parts over {workers} workers, {pq} "
                            f"(~{code} bytes/vector), inverted lists on disk")
    return ShardedPlan(spec, int(train_rows), parts, workers, int(add_batch),
                       int(fixed + 2 * biggest * code), budget, spec.reason)


# ---- the tasks --------------------------------------------------------------------------------
def fill_part(store_path: str, manifest: dict, shards: list[int], trained_path: str, out_path: str,
              add_batch: int, threads: int = 1) -> dict:
    """Add the live rows of `shards` to a copy of the trained index and write it to out_path.

    Runs in a worker process or Ray task; returns the part's row count, seconds and peak RSS.
    """
    import faiss

    t0 = time.perf_counter()
    faiss.omp_set_num_threads(threads)
    store = Store(store_path, manifest)
    index = faiss.read_index(trained_path)
    for ids, vecs in store.iter_embeddings(add_batch, shards=shards):  # each shard mapped only while read
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids)
    write_atomic(out_path, lambda p: faiss.write_index(index, str(p)))
    return {"rows": int(index.ntotal), "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss, not inherited from the
    parent a worker was forked from)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fill_part_args(args: tuple) -> dict:
    return fill_part(*args)


Runner = Callable[[Callable[[tuple], dict], list[tuple], int], list[dict]]


def process_runner(fn: Callable[[tuple], dict], jobs: list[tuple], workers: int) -> list[dict]:
    """Run jobs in `workers` spawned processes (one FAISS thread each), in order."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
        return list(ex.map(fn, jobs))


# ---- the build --------------------------------------------------------------------------------
def build_sharded(writer: StoreWriter, plan: ShardedPlan | None = None, max_memory: int | None = None,
                  workers: int | None = None, merge: bool = True, runner: Runner | None = None,
                  log: Callable[[str], None] = print, seed: int = 0) -> dict:
    """Build the committed rows' index by parts and record it in the manifest; returns the record."""
    import faiss

    snap = writer.snapshot()
    if snap.count == 0:
        raise ValueError("a sharded index needs at least one stored vector")
    shard_rows = [s["rows"] for s in snap.manifest["shards"]]
    plan = plan or plan_sharded(shard_rows, snap.dim, max_memory, workers)
    spec = plan.spec
    gen = snap.manifest["generation"] + 1
    t0 = time.perf_counter()
    if plan.memory_per_worker > plan.memory_budget // plan.workers:
        log(f"pixdex index: warning: each of {plan.workers} workers needs about "
            f"{plan.memory_per_worker / 2**20:.0f} MiB, more than --max-index-memory "
            f"{plan.memory_budget / 2**20:.0f} MiB allows (use fewer workers or a larger budget)")
    log(f"pixdex index: sharded {spec.factory} over {snap.count} vectors: training on {plan.train_rows}, "
        f"{len(plan.parts)} parts, {plan.workers} workers, "
        f"~{plan.memory_per_worker / 2**20:.0f} MiB per worker")
    trained = _train(snap, spec, plan.train_rows, seed)
    trained_path = writer.path / temporary_file(f"trained-{index_file(gen)}")
    faiss.write_index(trained, str(trained_path))
    t_train = time.perf_counter() - t0
    part_names = [index_part_file(gen, i) for i in range(len(plan.parts))]
    jobs = [(str(writer.path), snap.manifest, shards, str(trained_path), str(writer.path / name),
             plan.add_batch)
            for shards, name in zip(plan.parts, part_names)]
    results = (runner or process_runner)(_fill_part_args, jobs, plan.workers)
    t_add = time.perf_counter() - t0 - t_train
    files = list(part_names)
    if merge:
        from faiss.contrib.ondisk import merge_ondisk

        ivfdata = ivfdata_file(gen)
        index = faiss.read_index(str(trained_path))
        with faiss_chatter_to_stderr():
            merge_ondisk(index, [str(writer.path / p) for p in part_names], str(writer.path / ivfdata))
        write_atomic(writer.path / index_file(gen), lambda p: faiss.write_index(index, str(p)))
        for p in part_names:
            (writer.path / p).unlink()
        files, kind = [ivfdata], ONDISK
    else:
        kind = PARTS
    trained_path.unlink()
    t_merge = time.perf_counter() - t0 - t_train - t_add
    record = IndexRecord(kind, spec.factory, spec.nlist, spec.pq_m, spec.reason,
                         file=index_file(gen) if merge else part_names[0], files=files,
                         ntotal=int(sum(r["rows"] for r in results)), trained_on=plan.train_rows,
                         rows=snap.manifest["counts"]["rows"], deleted=len(snap.deleted_ids),
                         max_id=int(snap.manifest["next_id"]) - 1, how="built",
                         requested="sharded" if merge else "sharded-parts",
                         plan={"parts": len(plan.parts), "workers": plan.workers,
                               "memory_per_worker": plan.memory_per_worker,
                               "memory_budget": plan.memory_budget},
                         timings={"train": round(t_train, 2), "add": round(t_add, 2),
                                  "merge": round(t_merge, 2)},
                         peak_rss_worker=max(r["peak_rss"] for r in results))
    writer.set_index(record)  # the index must be named before it can be opened for tuning
    tuned = _tune(writer, spec, log)
    record = replace(record, params=tuned.params, recall_at_10=round(tuned.recall_at_10, 4),
                     rescored_recall_at_10=round(tuned.rescored_recall_at_10 or 0.0, 4),
                     search_ms_per_query=round(tuned.search_ms, 4),
                     build_seconds=round(time.perf_counter() - t0, 3))
    writer.set_index(record)
    return writer.manifest["index"]


def _train(snap: Store, spec: IndexSpec, rows: int, seed: int):
    """The empty IVF-PQ trained on `rows` stored vectors picked at random."""
    index = new_index(IndexSpec("ivfpq", spec.factory, spec.nlist, spec.pq_m), snap.dim)
    train_on_sample(index, snap, rows, seed)
    return index


def _tune(writer: StoreWriter, spec: IndexSpec, log: Callable[[str], None]):
    """Smallest nprobe reaching the target recall@10 on noisy stored vectors (exact truth, bounded memory)."""
    snap = Store(writer.path, writer.manifest)
    queries, truth = recall_sample(snap, "ivfpq")
    index = snap.load_index()
    return tune_params(index, queries, truth, IndexSpec("ivfpq", spec.factory, spec.nlist, spec.pq_m))


def plan_dict(plan: ShardedPlan) -> dict:
    """The plan as plain data (for --json and benchmarks)."""
    return {**asdict(plan), "spec": asdict(plan.spec)}
