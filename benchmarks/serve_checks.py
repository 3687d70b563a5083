"""What the server's hardening costs per request: the generation check, swapping in a new generation,
and the ASGI guards (Host check, body bound).

Peers, in the same process: the cheapest real search (an embedding query), opening a Searcher from
scratch, and the same tiny app without the guards.

    python benchmarks/serve_checks.py [--rows 100000] [--dim 512]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.models import ModelInfo
from indexer.store import StoreWriter
from pixdex.server.guards import BodyLimit, HostCheck, allowed_hosts
from pixdex.server.service import manifest_signature
from search.searcher import Searcher


def per_call(fn, n: int) -> float:
    """Seconds per call of fn over n calls (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def make_store(path: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    info = ModelInfo("bench", "clip", dim, "0123456789abcdef", "clip")
    with StoreWriter(path, info, shard_rows=4096) as w:
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            v = rng.standard_normal((n, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            w.append([{"path": f"/photos/{start + i}.jpg", "bytes": 1, "mtime": 1.0, "width": 1, "height": 1,
                       "sha256": f"{start + i:064x}"} for i in range(n)], v)


def tiny_app(guarded: bool):
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return {"n": len(body)}

    if guarded:
        app.add_middleware(BodyLimit, limit_for=lambda ctype: 1 << 20)
        app.add_middleware(HostCheck, hosts=allowed_hosts("127.0.0.1"))
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pixdex-bench-"))
    try:
        store = root / "store"
        make_store(store, args.rows, args.dim)
        searcher = Searcher(store)
        q = np.random.default_rng(1).standard_normal(args.dim).astype(np.float32)
        check = per_call(lambda: manifest_signature(store), 2000)
        search = per_call(lambda: searcher.search_embedding(q, k=10), 20)
        print(f"generation check (stat of manifest.json): {check * 1e6:.1f} us; "
              f"exact embedding search k=10 over "
              f"{args.rows:,} rows: {search * 1e3:.1f} ms; check / search = {check / search:.5f}")
        reopen = per_call(searcher.reopened, 20)
        fresh = per_call(lambda: Searcher(store), 20)
        print(f"swap in a new generation (Searcher.reopened): {reopen * 1e3:.2f} ms; fresh Searcher: "
              f"{fresh * 1e3:.2f} ms; ratio {reopen / fresh:.2f}x")

        from fastapi.testclient import TestClient

        body = {"query": "a red circle", "k": 10}
        times = {}
        for guarded in (False, True):
            client = TestClient(tiny_app(guarded), base_url="http://127.0.0.1")
            times[guarded] = per_call(lambda c=client: c.post("/echo", json=body), 500)
        print(f"tiny JSON POST through TestClient: guarded {times[True] * 1e3:.3f} ms, unguarded "
              f"{times[False] * 1e3:.3f} ms; ratio {times[True] / times[False]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
