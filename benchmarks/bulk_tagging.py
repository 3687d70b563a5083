"""Bulk tagging speed: N stored 512-d embeddings against L labels, vs the raw matmul of the same sizes.

Builds (or reuses) a synthetic store of N normalised float16 embeddings written through StoreWriter,
then times `classify.tagging.iter_tag_blocks` (single-label top-k with softmax scores, the
pipeline's scoring) over it, and the bare float32 numpy matmul [N, dim] @ [dim, L] on data already
in memory (the physical floor here). Prints the ratio; the target is within 1.5x.

    python benchmarks/bulk_tagging.py --rows 1000000 --labels 1000 --store /tmp/bench-1m.pixdex
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classify.prompts import LabelSet
from classify.scoring import Scoring
from classify.sinks import FileSink, block_table
from classify.tagging import iter_tag_blocks
from indexer.encoder import ModelInfo
from indexer.store import Store, StoreWriter, is_store


def build_store(path: Path, rows: int, dim: int, seed: int = 0) -> Store:
    """A store of `rows` random unit float16 embeddings (written once, reused on later runs)."""
    if is_store(path):
        st = Store.open(path)
        if st.count == rows and st.dim == dim:
            return st
        raise SystemExit(f"{path} holds {st.count}x{st.dim}; remove it or choose another --store")
    info = ModelInfo("synthetic", "clip", dim, f"synthetic-{dim}", "clip")
    rng = np.random.default_rng(seed)
    chunk = 65536
    t0 = time.perf_counter()
    with StoreWriter(path, info) as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            emb = rng.standard_normal((n, dim), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            meta = [{"path": f"/synthetic/{i:08d}.jpg", "bytes": 0, "mtime": 0.0, "width": 0, "height": 0,
                     "sha256": ""} for i in range(start, start + n)]
            w.append(meta, emb)
    print(f"built {path}: {rows} x {dim} float16 in {time.perf_counter() - t0:.1f} s", flush=True)
    return Store.open(path)


def floor_matmul(rows: int, dim: int, labels: np.ndarray, block: int, seed: int = 1) -> float:
    """Seconds of the bare float32 matmul [rows, dim] @ [dim, labels] (inputs in memory, blocked)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((min(rows, 262144), dim), dtype=np.float32)  # reused: same FLOPs, less RAM
    w = np.ascontiguousarray(labels.T)
    out = np.empty((block, w.shape[1]), np.float32)
    t0 = time.perf_counter()
    done = 0
    while done < rows:
        for s in range(0, len(x), block):
            n = min(block, len(x) - s, rows - done)
            if n <= 0:
                break
            np.matmul(x[s : s + n], w, out=out[:n])
            done += n
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="best of N timings")
    ap.add_argument("--store", default="/tmp/pixdex-bench-tagging.pixdex")
    ap.add_argument("--out", default=None, help="also time writing FILE.parquet/.csv/.jsonl")
    args = ap.parse_args()

    st = build_store(Path(args.store), args.rows, args.dim)
    load0 = f"{os.getloadavg()[0]:.2f}"
    rng = np.random.default_rng(2)
    lab = rng.standard_normal((args.labels, args.dim), dtype=np.float32)
    lab /= np.linalg.norm(lab, axis=1, keepdims=True)
    label_set = LabelSet([f"label{i}" for i in range(args.labels)], lab, Scoring("clip", 100.0), ["{}"])

    def tag() -> int:
        n = 0
        for block in iter_tag_blocks(st, label_set, "single", args.top_k, device="cpu",
                                     batch_rows=args.batch_rows, workers=args.workers, progress=False):
            n += len(block.ids)
        return n

    tag()  # warm the page cache and the BLAS threads
    floors, times, cpu_floor, cpu_tag = [], [], [], []
    for _ in range(args.repeat):  # interleaved, so background load hits both alike
        c0 = time.process_time()
        floors.append(floor_matmul(args.rows, args.dim, lab, 4096))
        cpu_floor.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        n = tag()
        times.append(time.perf_counter() - t0)
        cpu_tag.append(time.process_time() - c0)
    floor, best = min(floors), min(times)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, "
          f"numpy {np.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f}")
    print(f"raw float32 matmul {args.rows}x{args.dim} @ {args.dim}x{args.labels} (blocks of 4096): "
          f"{floor:.2f} s; "
          f"all runs {', '.join(f'{t:.2f}' for t in floors)}")
    print(f"tagging {n} stored float16 embeddings, top-{args.top_k} with softmax scores: {best:.2f} s "
          f"({n / best:,.0f} images/s); all runs {', '.join(f'{t:.2f}' for t in times)}")
    print(f"ratio to the raw matmul: {best / floor:.2f}x wall-clock, best of each (target <= 1.5x); "
          f"run by run: {', '.join(f'{t / f:.2f}' for t, f in zip(times, floors))}")
    print(f"CPU seconds (all threads): matmul {min(cpu_floor):.1f}, tagging {min(cpu_tag):.1f} "
          f"-> {min(cpu_tag) / min(cpu_floor):.2f}x (less sensitive to other load on the machine)")
    if args.out:
        t0 = time.perf_counter()
        sink = FileSink(args.out)
        labels = __import__("pyarrow").array(label_set.labels)
        for block in iter_tag_blocks(st, label_set, "single", args.top_k, device="cpu",
                                     batch_rows=args.batch_rows, workers=args.workers, progress=False):
            sink.write(block_table(block, labels, st.path_array(block.ids), args.top_k > 1))
        sink.close()
        print(f"tagging + writing {args.out}: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
