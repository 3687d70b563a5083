"""Duplicate finder: precision/recall of duplicate pairs, CLIP threshold only vs two-stage, and scale.

1. quality: a generated shapes-world collection (pixdex/demo/copies.py): originals, transformed copies
   at graded strengths (resize, recompress, format convert, light crop, EXIF-rotated) and hard negatives
   (another scene of the same colour and shape; the same scene with one object moved), indexed with
   shapes-clip. For each strength, side by side:
     two-stage     pixdex's finder (cosine >= --threshold candidates from the index, pixel check)
     CLIP pairs    every pair with cosine >= t, t the highest threshold whose recall reaches the
                   two-stage finder's (at least --recall): the plain threshold immich-style finders use
     CLIP groups   the same threshold through pixdex's grouping (union-find), without the pixel check
2. scale: the candidate stage over N synthetic stored vectors (clustered, with planted near-copies),
   through the store's FAISS index as `pixdex duplicates` runs it; seconds for each N show the growth.

    python benchmarks/duplicates.py --originals 150                       # quality only
    python benchmarks/duplicates.py --originals 0 --scale 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.errors import PixdexError
from pixdex.demo.copies import STRENGTHS, read_truth, score_pairs, write_duplicate_collection
from search.duplicates import DEFAULT_THRESHOLD, candidate_pairs, find_duplicates
from search.lookalike import DEFAULT_TOLERANCE
from search.searcher import Searcher


def quality(
    root: Path, originals: int, seed: int, threshold: float, tolerance: float, target: float
) -> list[dict]:
    """Rows of the side-by-side table, one per strength."""
    from indexer.job import index_collection

    images = root / "images"
    truth_csv = write_duplicate_collection(images, originals=originals, seed=seed)
    t0 = time.perf_counter()
    summary = index_collection([str(images)], root / "store", model="shapes-clip", progress=False)
    print(f"indexed {summary.count} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    searcher = Searcher(root / "store")
    store = searcher.store
    by_name = {e.file: e for e in read_truth(truth_csv)}
    ids, emb = store.embeddings()
    truth = {int(i): by_name[Path(p).name] for i, p in zip(ids, store.paths(ids))}
    t0 = time.perf_counter()
    two = find_duplicates(searcher, threshold=threshold, tolerance=tolerance)
    two_s = time.perf_counter() - t0
    print(f"two-stage: {two.line()} in {two_s:.1f} s {two.seconds}", file=sys.stderr)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    iu = np.triu_indices(len(ids), 1)
    cos = sims[iu]
    order = np.argsort(-cos)
    pairs_sorted = [
        (int(min(ids[iu[0][k]], ids[iu[1][k]])), int(max(ids[iu[0][k]], ids[iu[1][k]])))
        for k in order[: 200 * len(ids)]
    ]
    cos_sorted = cos[order[: 200 * len(ids)]]
    rows = []
    for strength in [*STRENGTHS, None]:
        mine = score_pairs(two.pairs(), truth, strength)
        want = max(target, mine.recall) if strength == "moderate" else mine.recall
        best = None
        for t in np.round(np.arange(0.999, 0.5, -0.001), 3):  # highest threshold reaching the recall
            n = int(np.searchsorted(-cos_sorted, -t, side="right"))
            sc = score_pairs(set(pairs_sorted[:n]), truth, strength)
            if sc.recall >= want:
                best = (float(t), sc)
                break
        grouped = None
        if best is not None:
            grouped = score_pairs(
                find_duplicates(searcher, threshold=best[0], tolerance=None).pairs(), truth, strength
            )
        rows.append(
            {
                "strength": strength or "all",
                "two": mine,
                "clip_t": best[0] if best else None,
                "clip": best[1] if best else None,
                "clip_grouped": grouped,
            }
        )
    return rows


def print_quality(rows: list[dict], threshold: float, tolerance: float) -> None:
    print(
        f"\nduplicate pairs: two-stage (cosine >= {threshold}, pixel tolerance {tolerance}) "
        "vs CLIP threshold only"
    )
    print(
        f"{'strength':<9} {'pairs':>5} | {'two-stage P':>11} {'R':>6} | "
        f"{'CLIP t':>6} {'pairs P':>7} {'R':>6} | "
        f"{'groups P':>8} {'R':>6}"
    )
    for r in rows:
        two, clip, grp = r["two"], r["clip"], r["clip_grouped"]
        c = (
            f"{r['clip_t']:6.3f} {clip.precision:7.3f} {clip.recall:6.3f}"
            if clip
            else f"{'-':>6} {'-':>7} {'-':>6}"
        )
        g = f"{grp.precision:8.3f} {grp.recall:6.3f}" if grp else f"{'-':>8} {'-':>6}"
        print(f"{r['strength']:<9} {two.true_pairs:>5} | {two.precision:11.3f} {two.recall:6.3f} | {c} | {g}")


def synthetic_store(path: Path, n: int, dim: int, seed: int = 0, probes: int = 16) -> tuple[float, int]:
    """A store of n clustered unit vectors, 1% of them planted near-copies (cosine ~0.97) of their neighbour,
    with an IVF-Flat index (nlist ~ 4 sqrt(n) as `pixdex index --index ivf` picks; trained on 16 points per
    list to keep the benchmark short; nprobe fixed instead of tuned).

    Returns (index build seconds, planted pairs)."""
    import faiss

    from indexer.atomic import write_atomic
    from indexer.encoder import ModelInfo
    from indexer.faiss_index import build_index, choose_index
    from indexer.store import StoreWriter

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 2000), dim)).astype(np.float32)
    info = ModelInfo(
        name="synthetic", family="clip", dim=dim, fingerprint=f"synthetic-{dim}", model_type="clip"
    )
    planted = 0
    with StoreWriter(path, info, shard_rows=65536) as w:
        for start in range(0, n, 65536):
            m = min(65536, n - start)
            v = centres[rng.integers(len(centres), size=m)] + 1.2 * rng.standard_normal((m, dim)).astype(
                np.float32
            )
            copies = rng.random(m) < 0.01
            copies[0] = False
            src = np.arange(m) - 1
            v[copies] = v[src[copies]] + 0.25 * rng.standard_normal((int(copies.sum()), dim)).astype(
                np.float32
            )
            planted += int(copies.sum())
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            rows = [
                {
                    "path": f"/synthetic/{start + i}.jpg",
                    "bytes": 1,
                    "mtime": 0.0,
                    "width": 1,
                    "height": 1,
                    "sha256": f"{start + i:064x}",
                }
                for i in range(m)
            ]
            w.append(rows, v)
        w.commit()
        t0 = time.perf_counter()
        ids, vectors = w.snapshot().embeddings()
        spec = choose_index(n, dim, kind="ivf")
        index = build_index(vectors, ids, spec, train_sample=16 * spec.nlist)
        del vectors
        rel = "index-synthetic.faiss"
        write_atomic(w.path / rel, lambda p: faiss.write_index(index, str(p)))
        w.set_index(
            {
                "type": "ivf",
                "factory": spec.factory,
                "nlist": spec.nlist,
                "params": {"nprobe": probes},
                "recall_at_10": None,
                "ntotal": n,
                "file": rel,
                "rows": n,
                "deleted": 0,
                "max_id": n - 1,
                "requested": "ivf",
            }
        )
        w.commit()
        return time.perf_counter() - t0, planted


def scale(root: Path, sizes: list[int], dim: int, threshold: float) -> list[dict]:
    import faiss

    rows = []
    for n in sizes:
        path = root / f"synthetic-{n}"
        build_s, planted = synthetic_store(path, n, dim)
        searcher = Searcher(path)
        t0, c0 = time.perf_counter(), time.process_time()
        found = sum(len(a) for a, _, _ in candidate_pairs(searcher, threshold, progress=sys.stderr.isatty()))
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append(
            {
                "n": n,
                "index": searcher.store.index_info.get("factory"),
                "build_s": build_s,
                "seconds": secs,
                "cpu": cpu,
                "pairs": found,
                "planted": planted,
                "threads": faiss.omp_get_max_threads(),
                "load": os.getloadavg()[0],
            }
        )
        print(
            f"n={n}: index {rows[-1]['index']} built in {build_s:.0f} s; candidate stage {secs:.1f} s wall, "
            f"{cpu:.1f} s CPU, {found} pairs (planted {planted}); load {rows[-1]['load']:.1f}",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(path)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--originals", type=int, default=150, help="original scenes (0: skip the quality part)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    p.add_argument(
        "--recall", type=float, default=0.95, help="recall the baseline must reach on moderate copies"
    )
    p.add_argument(
        "--scale", type=int, nargs="*", default=[], metavar="N", help="synthetic store sizes to time"
    )
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    args = p.parse_args(argv)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        if args.originals:
            rows = quality(
                root / "quality", args.originals, args.seed, args.threshold, args.tolerance, args.recall
            )
            print_quality(rows, args.threshold, args.tolerance)
        if args.scale:
            rows = scale(root, args.scale, args.dim, args.threshold)
            print(
                f"\ncandidate stage over synthetic {args.dim}-d vectors (cosine >= {args.threshold}, "
                f"{rows[0]['threads']} threads)"
            )
            print(
                f"{'n':>9} {'index':<16} {'build s':>8} {'wall s':>8} {'CPU s':>8} {'CPU us/vec':>10} "
                f"{'pairs':>8} "
                f"{'planted':>8} {'load':>5}"
            )
            for r in rows:
                print(
                    f"{r['n']:>9} {r['index']:<16} {r['build_s']:8.0f} {r['seconds']:8.1f} {r['cpu']:8.1f} "
                    f"{1e6 * r['cpu'] / r['n']:10.1f} {r['pairs']:>8} {r['planted']:>8} {r['load']:5.1f}"
                )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PixdexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
