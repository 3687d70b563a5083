"""Sharded index build benchmark: a synthetic N-vector store indexed through the sharded path.

    python benchmarks/sharded_build.py --n 10000000            # the 10M run recorded in BENCHMARKS.md
    python benchmarks/sharded_build.py --n 300000 --quick      # a few minutes

Writes a pixdex store of N synthetic 512-d unit vectors (the Gaussian mixture of search_latency.py,
65,536-row shards, never all in memory), then in fresh processes (so each peak RSS is its own):

  - sharded: `--index sharded` as the indexer runs it: IVF-PQ trained on a sample, parts filled by
    `--workers` processes, merged on disk (merge_ondisk), nprobe tuned to recall@10 0.95 on noisy
    stored vectors;
  - peer: the same IVF-PQ, trained on the same sample, built the classic way in one process (the
    whole index in RAM, vectors streamed from the store, FAISS on all cores), unless --no-peer.

Then, on fresh queries from the mixture (not stored vectors) with exact top-10 over all N as truth:
recall@10 of the raw index at its tuned nprobe, and of Searcher (IVF-PQ candidates re-scored exactly
from the stored embeddings), with p50 latency. Prints Markdown; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import DIM, Mixture, recall

SHARD_ROWS = 65_536


def write_store(path: Path, n: int, seed: int = 0) -> float:
    """A store of n mixture vectors, written shard by shard; returns seconds."""
    from indexer.encoder import ModelInfo
    from indexer.store import StoreWriter

    t0 = time.perf_counter()
    if path.exists():
        shutil.rmtree(path)
    info = ModelInfo("synthetic-512", "clip", DIM, "synthetic0000512", "clip")
    mix = Mixture(seed)
    with StoreWriter(path, info, shard_rows=SHARD_ROWS) as w:
        for k, s in enumerate(range(0, n, SHARD_ROWS)):
            m = min(SHARD_ROWS, n - s)
            rows = [{"path": f"/bench/{i:09d}.jpg", "bytes": 0, "mtime": 0.0, "width": 224, "height": 224,
                     "sha256": ""} for i in range(s, s + m)]
            w.append(rows, mix.sample(m, seed=1000 + k))
            if k % 20 == 0:
                print(f"  wrote {s + m:,}/{n:,} vectors ({time.perf_counter() - t0:.0f} s)", flush=True)
    return time.perf_counter() - t0


def _peak() -> dict:
    from indexer.sharded_index import peak_rss

    return {"peak_rss_main": peak_rss()}


def run_sharded(store: str, workers: int, max_memory: int, nlist: int | None, out) -> None:
    from indexer.sharded_index import build_sharded, plan_dict, plan_sharded
    from indexer.store import StoreWriter

    t0 = time.perf_counter()
    with StoreWriter(store) as w:
        snap = w.snapshot()
        plan = plan_sharded([s["rows"] for s in snap.manifest["shards"]], snap.dim, max_memory, workers,
                            nlist=nlist)
        record = build_sharded(w, plan, log=lambda m: print(m, flush=True))
    out.put({"seconds": time.perf_counter() - t0, "record": record, "plan": plan_dict(plan), **_peak()})


def run_peer(store: str, factory: str, nlist: int, pq_m: int, train_rows: int, out) -> None:
    """The same IVF-PQ, trained on the same sample, filled in one process in RAM,
    written to a scratch file."""
    import faiss

    from indexer.faiss_index import IndexSpec
    from indexer.sharded_index import _train
    from indexer.store import Store

    t0 = time.perf_counter()
    snap = Store.open(store)
    index = _train(snap, IndexSpec("ivfpq", factory, nlist, pq_m), train_rows, 0)
    for ids, vecs in snap.iter_embeddings(SHARD_ROWS):
        index.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids)
    path = Path(store) / ".tmp-peer.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    out.put({"seconds": time.perf_counter() - t0, "bytes": size, **_peak()})


def in_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def evaluate(store: Path, n_queries: int, seed: int = 99) -> dict:
    """Recall@10 and p50 of the raw sharded index and of Searcher on fresh mixture queries."""
    from indexer.faiss_index import exact_top_k_ids
    from indexer.store import Store
    from search import Searcher

    q = Mixture(0).sample(n_queries, seed=seed)
    snap = Store.open(store)
    t0 = time.perf_counter()
    truth = exact_top_k_ids(snap.iter_embeddings(SHARD_ROWS), q, 10)
    truth_s = time.perf_counter() - t0
    index = snap.load_index()
    raw, raw_ms = [], []
    for v in q:
        t = time.perf_counter()
        raw.append(index.search(v[None], 10)[1][0])
        raw_ms.append((time.perf_counter() - t) * 1e3)
    s = Searcher(store)
    found, ms = [], []
    for v in q:
        t = time.perf_counter()
        found.append([h.id for h in s.search_embedding(v, k=10)])
        ms.append((time.perf_counter() - t) * 1e3)
    return {"queries": n_queries, "exact_truth_seconds": round(truth_s, 1),
            "raw_recall_at_10": round(recall(raw, truth), 4),
            "raw_p50_ms": round(float(np.median(raw_ms)), 2),
            "searcher_recall_at_10": round(recall(found, truth), 4),
            "searcher_p50_ms": round(float(np.median(ms)), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--work", default="/tmp/pixdex-sharded-bench", help="scratch folder for the store")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-memory", default="2G", help="--max-index-memory for the sharded build")
    ap.add_argument("--nlist", type=int, default=None,
                    help="override the planned nlist (default: ~4*sqrt(n))")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-peer", action="store_true", help="skip the single-process build")
    ap.add_argument("--keep", action="store_true",
                    help="keep the store for another run (reused if its size matches)")
    ap.add_argument("--quick", action="store_true", help="fewer queries")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    from pixdex.cli.common import parse_bytes

    budget = parse_bytes(args.max_memory)
    store = Path(args.work) / f"store-{args.n}"
    from indexer.store import Store

    if store.exists() and Store.open(store).count == args.n:
        write_s = None
        print(f"reusing {store}", flush=True)
    else:
        print(f"writing {args.n:,} vectors to {store}", flush=True)
        write_s = write_store(store, args.n)
    sharded = in_process(run_sharded, str(store), args.workers, budget, args.nlist)
    rec = sharded["record"]
    files = [rec["file"], *rec["files"]]
    index_bytes = sum((store / f).stat().st_size for f in files)
    print(f"sharded build: {sharded['seconds']:.0f} s", flush=True)
    peer = None
    if not args.no_peer:
        peer = in_process(run_peer, str(store), rec["factory"], rec["nlist"], rec["pq_m"], rec["trained_on"])
        print(f"peer build: {peer['seconds']:.0f} s", flush=True)
    ev = evaluate(store, 50 if args.quick else args.queries)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores", "python": platform.python_version(), "n": args.n, "dim": DIM,
        "command": "python benchmarks/sharded_build.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "store_write_seconds": round(write_s, 1) if write_s else None,
        "factory": rec["factory"], "nprobe": rec["params"].get("nprobe"), "parts": rec["plan"]["parts"],
        "workers": rec["plan"]["workers"], "max_index_memory": budget,
        "planned_memory_per_worker": rec["plan"]["memory_per_worker"],
        "sharded_seconds": round(sharded["seconds"], 1), "timings": rec["timings"],
        "sharded_peak_rss_main": sharded["peak_rss_main"], "sharded_peak_rss_worker": rec["peak_rss_worker"],
        "index_bytes": index_bytes, "index_bytes_per_vector": round(index_bytes / args.n, 2),
        "tuned_recall_at_10_noisy_stored": rec["recall_at_10"],
        **ev,
    }
    if peer:
        result.update(peer_seconds=round(peer["seconds"], 1), peer_peak_rss=peer["peak_rss_main"],
                      peer_index_bytes=peer["bytes"],
                      time_ratio_sharded_over_peer=round(sharded["seconds"] / peer["seconds"], 3),
                      worker_rss_ratio_over_peer=round(rec["peak_rss_worker"] / peer["peak_rss_main"], 3))
    mib = 2**20
    print(f"\n### Sharded build, {args.n:,} x {DIM} ({result['date']}, {result['machine']})\n")
    print("| | sharded (pixdex --index sharded) | peer: one-process IVF-PQ in RAM |")
    print("|---|---|---|")
    print(f"| index | {rec['factory']}, {rec['plan']['parts']} parts, {rec['plan']['workers']} workers, "
          f"merged on disk "
          f"| {rec['factory']} |")
    if peer:
        print(f"| build wall-clock | {sharded['seconds']:.0f} s (train {rec['timings']['train']:.0f}, add "
              f"{rec['timings']['add']:.0f}, merge {rec['timings']['merge']:.0f}) | "
              f"{peer['seconds']:.0f} s |")
        print(f"| peak RSS | main {sharded['peak_rss_main'] / mib:.0f} MiB, "
              f"worker {rec['peak_rss_worker'] / mib:.0f} MiB "
              f"(budget {budget / mib:.0f} MiB) | {peer['peak_rss_main'] / mib:.0f} MiB |")
        print(f"| index bytes/vector | {index_bytes / args.n:.1f} | {peer['bytes'] / args.n:.1f} |")
    print(f"\nrecall@10 on {ev['queries']} fresh queries (exact truth over all {args.n:,}): "
          f"raw IVF-PQ at nprobe "
          f"{rec['params'].get('nprobe')} {ev['raw_recall_at_10']:.3f} (p50 {ev['raw_p50_ms']:.1f} ms); "
          f"Searcher with "
          f"exact re-scoring {ev['searcher_recall_at_10']:.3f} (p50 {ev['searcher_p50_ms']:.1f} ms)")
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
