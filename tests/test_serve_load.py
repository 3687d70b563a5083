"""A bounded load test on loopback: concurrent clients for a bounded time, zero errors, latency printed."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx
from serving import running

CLIENTS = 6
SECONDS = 6.0
MAX_REQUESTS_PER_CLIENT = 300
QUERIES = ["a red circle", "a blue square", '"2:green star" - "red"', "id:3", "a small yellow triangle"]


@pytest.mark.slow
def test_concurrent_clients_get_no_errors(tiny_store):
    from pixdex.server.app import create_app

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int, base: str) -> None:
        deadline = time.time() + SECONDS
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(MAX_REQUESTS_PER_CLIENT):
                if time.time() > deadline:
                    break
                kind = (n + i) % 4
                t0 = time.perf_counter()
                if kind == 0:
                    r = http.get("/api/search", params={"q": QUERIES[i % len(QUERIES)], "k": 10})
                elif kind == 1:
                    r = http.post("/api/search", json={"id": i % 40, "k": 5})
                elif kind == 2:
                    r = http.post("/api/classify",
                                  json={"ids": [i % 40, (i + 1) % 40], "labels": ["circle", "star"]})
                else:
                    r = http.get(f"/api/items/{i % 48}/thumbnail")
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if r.status_code != 200:
                        errors.append(f"{r.request.url}: {r.status_code} {r.text[:100]}")

    with running(create_app(tiny_store)) as base:
        threads = [threading.Thread(target=client, args=(n, base)) for n in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 60)
        wall = time.perf_counter() - t0
    assert not errors, errors[:5]
    assert len(latencies) >= CLIENTS  # every client got through at least once
    q = statistics.quantiles(latencies, n=100)
    print(f"\nload: {CLIENTS} clients, {len(latencies)} requests in {wall:.1f} s "
          f"({len(latencies) / wall:.0f} req/s), "
          f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, errors 0")
