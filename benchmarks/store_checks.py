"""What the store's self-checks cost: writing with checksums, opening (sizes), probing, a full --check.

Peers, in the same process: the same writes with checksum recording switched off, and a plain read of
every file (what any full check must at least do).

    python benchmarks/store_checks.py [--rows 100000] [--dim 512] [--shard-rows 4096]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.encoder import ModelInfo
from indexer.store import Store, StoreWriter


def write_store(path: Path, rows: int, dim: int, shard_rows: int, record: bool) -> float:
    """Seconds to append `rows` random unit vectors (with metadata) and commit them shard by shard."""
    rng = np.random.default_rng(0)
    info = ModelInfo("bench", "clip", dim, "0123456789abcdef", "clip")
    t0 = time.perf_counter()
    with StoreWriter(path, info, shard_rows=shard_rows) as w:
        if not record:
            w._record_files = lambda: None  # the peer: the same writes without checksums
        for start in range(0, rows, shard_rows):
            n = min(shard_rows, rows - start)
            v = rng.standard_normal((n, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            w.append([{"path": f"/photos/{start + i}.jpg", "bytes": 1, "mtime": 1.0, "width": 1, "height": 1,
                       "sha256": f"{start + i:064x}"} for i in range(n)], v)
    return time.perf_counter() - t0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_all(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard-rows", type=int, default=4096)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pixdex-bench-"))
    try:
        with_sums = write_store(root / "a", args.rows, args.dim, args.shard_rows, record=True)
        without = write_store(root / "b", args.rows, args.dim, args.shard_rows, record=False)
        store = Store.open(root / "a")
        files = len(store.manifest["files"])
        size = sum(r["bytes"] for r in store.manifest["files"].values())
        opening = min(timed(lambda: Store.open(root / "a")) for _ in range(5))
        probing = min(timed(lambda: Store.open(root / "a").check_probes()) for _ in range(3))
        full = timed(lambda: Store.open(root / "a").verify(full=True))
        plain = timed(lambda: read_all(root / "a"))
        print(f"store: {args.rows} rows x {args.dim} dims, {len(store.manifest['shards'])} shards, "
              f"{files} files, "
              f"{size / 2**20:.0f} MiB")
        print(f"write with checksums {with_sums:.2f} s, without {without:.2f} s: {with_sums / without:.2f}x")
        print(f"open (manifest + sizes) {opening * 1e3:.1f} ms; "
              f"open + probe every file {probing * 1e3:.1f} ms")
        print(f"info --check (sha256 + every file parsed) {full:.2f} s; "
              f"plain read of every file {plain:.2f} s: "
              f"{full / plain:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
