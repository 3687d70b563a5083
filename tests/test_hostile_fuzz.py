"""Fuzz every endpoint of a running server (loopback) with random and mutated JSON bodies, query strings,
form fields and paths: no answer is a 5xx, every error is one line of JSON, and the server's memory stays
bounded. Seeded, and bounded in requests and time."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import time

import pytest

pytest.importorskip("fastapi")
import httpx
import psutil
from serving import running

SEED = int(os.environ.get("PIXDEX_FUZZ_SEED", "15"))  # another seed explores further
MAX_REQUESTS = 600
MAX_SECONDS = 90.0
RSS_GROWTH_MB = 300  # a body read whole (the 500 MB) or a decoded bomb would pass this

QUERY_BITS = ["a red circle", "id:", "id:3", "like:", "image:", "text:", "+", "-", '"', "'", "2:", "0:",
              "-1:", "http://127.0.0.1:9/x.png", "/etc/passwd", "/dev/zero", "{}", "\\", "\x00", "é", "🙂",
              " ", "id:1e9"]
FILTER_BITS = ["id", "width", "path", "shape_pred", "=", "!=", "<", ">=", "AND", "OR", "NOT", "(", ")", "IN",
               "LIKE", "GLOB", "IS", "NULL", "'a'", '"b"', "`x`", "1", "-1", "1e999",
               "99999999999999999999999", ",", "%", "NEAR(1, 2, 3)", "taken", ">= '2024-01-01'", "TRUE"]
VALID_BODIES = [
    ("/api/search", {"query": "a red circle", "k": 5}),
    ("/api/search", {"queries": ["a red circle", "id:3"], "k": 3, "where": "width > 10"}),
    ("/api/search", {"id": 3, "k": 4, "threshold": 0.1}),
    ("/api/search", {"embedding": [0.1] * 16, "k": 2, "sort": "-width", "columns": ["width"]}),
    ("/api/classify", {"ids": [0, 1, 2], "labels": ["circle", "star"], "template": "a {}", "top_k": 1}),
]


def random_text(rng: random.Random, bits: list[str], most: int = 12) -> str:
    parts = [rng.choice(bits) if rng.random() < 0.8
             else "".join(rng.choices(string.printable, k=rng.randint(1, 8)))
             for _ in range(rng.randint(0, most))]
    text = " ".join(parts)
    if rng.random() < 0.05:
        text = text * rng.randint(50, 500)  # long
    return text


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 5, 2**63, -(2**63) - 1, 10**30, 10**300, rng.randint(-10**6, 10**6)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e300, -1e-300, 1e308 * 10, float("nan"), rng.uniform(-2, 2)])
    if kind in (4, 5, 6):
        return random_text(rng, QUERY_BITS + FILTER_BITS, 6)
    if kind in (7, 8):
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 16, 40]))]
    return {rng.choice(["query", "queries", "id", "ids", "k", "labels", "template", "where", "threshold",
                        "embedding", "top_k", "sort", "columns", "x"]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}


def mutated_body(rng: random.Random) -> tuple[str, bytes]:
    """A valid body with one part changed: a value replaced, a key dropped or added, or bytes damaged."""
    url, body = rng.choice(VALID_BODIES)
    body = json.loads(json.dumps(body))
    action = rng.randrange(5)
    if action == 0:
        body[rng.choice(list(body))] = random_value(rng)
    elif action == 1:
        body.pop(rng.choice(list(body)))
    elif action == 2:
        body[rng.choice(["k", "where", "threshold", "template", "labels", "ids", "id", "sort", "columns",
                         "extra"])] = random_value(rng)
    elif action == 3:
        key = rng.choice(list(body))
        if isinstance(body[key], list) and body[key]:
            body[key][rng.randrange(len(body[key]))] = random_value(rng)
        else:
            body[key] = [body[key]] * rng.randint(0, 600)
    raw = json.dumps(body).encode()  # NaN/Infinity included: Python's JSON reads them
    if action == 4:  # byte damage: truncation, a flipped byte, nesting
        cut = rng.randrange(len(raw) + 1)
        raw = rng.choice([raw[:cut], raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1:],
                          b"[" * rng.randint(1, 20_000) + raw, raw + b"}" * 5])
    return url, raw


def one_request(rng: random.Random, http: httpx.Client) -> httpx.Response:
    kind = rng.randrange(10)
    if kind <= 2:
        url, raw = mutated_body(rng) if kind < 2 else (rng.choice(["/api/search", "/api/classify"]),
                                                       json.dumps(random_value(rng)).encode())
        ctype = rng.choice(["application/json"] * 8 + ["text/plain", "application/x-www-form-urlencoded", ""])
        return http.post(url, content=raw, headers={"content-type": ctype} if ctype else {})
    if kind == 3:
        params = {"q": random_text(rng, QUERY_BITS),
                  "k": rng.choice(["5", "0", "-1", "x", "1e3", "999999999999"]),
                  "where": random_text(rng, FILTER_BITS),
                  "threshold": rng.choice(["0.1", "x", "nan", "2", ""]),
                  "sort": rng.choice(["", "width", "-width", "nope", "--x", "🙂"])}
        return http.get("/api/search",
                        params={k: v for k, v in params.items() if rng.random() < 0.8 or k == "q"})
    if kind == 4:
        token = rng.choice(["0", "3", "47", "48", "-1", "99999999999999999999", "x", "%00", "..%2F..%2Fetc",
                            "1.5"])
        return http.get(f"/api/items/{token}{rng.choice(['', '/thumbnail', '/image', '/nope'])}")
    if kind == 5:
        params = {"threshold": rng.choice(["0.9", "x", "2", "-1"]),
                  "tolerance": rng.choice(["0.1", "x", "-5"]),
                  "limit": rng.choice(["1", "0", "x", "9999999"])}
        return http.get("/api/duplicates", params={k: v for k, v in params.items() if rng.random() < 0.5})
    if kind == 6:
        data = {"k": rng.choice(["3", "x", ""]), "labels": random_text(rng, ["a", ",", "circle", " "], 6),
                "where": random_text(rng, FILTER_BITS, 4), "template": rng.choice(["{}", "{0}", "x", ""])}
        image = rng.choice([b"", b"not an image",
                            b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(64))])
        return http.post(rng.choice(["/api/search", "/api/classify"]),
                         files={"image": ("x.png", image, "image/png")},
                         data={k: v for k, v in data.items() if rng.random() < 0.7})
    if kind == 7:
        return http.request(rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
                            rng.choice(["/api/search", "/api/classify", "/", "/api/info", "/nope",
                                        "/static/x"]))
    if kind == 8:
        return http.get(rng.choice(["/health", "/api/info", "/", "/openapi.json"]),
                        headers={"host": rng.choice(["127.0.0.1", "localhost:1", "evil.example", "[::1]"])})
    # kind 9: a big body, chunked or declared
    size = rng.choice([2, 8, 20]) * 2**20
    chunks = (b"[" * 65536 for _ in range(size // 65536))
    return http.post("/api/search", content=chunks, headers={"content-type": "application/json"})


@pytest.mark.slow
def test_fuzz_every_endpoint(tmp_path, tiny_store):
    from pixdex.server.app import create_app
    from pixdex.server.limits import Limits

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    rng = random.Random(SEED)
    me = psutil.Process()
    failures, statuses = [], {}
    with running(create_app(store, limits=Limits(max_k=50, max_labels=20))) as base, \
            httpx.Client(base_url=base, timeout=60) as http:
        http.get("/api/search", params={"q": "warm up"})
        http.get("/api/duplicates")
        rss0 = peak = me.memory_info().rss
        deadline = time.monotonic() + MAX_SECONDS
        done = 0
        while done < MAX_REQUESTS and time.monotonic() < deadline:
            try:
                resp = one_request(rng, http)
            except httpx.HTTPError:  # the server closed a connection mid-body (after its 413): not a 5xx
                done += 1
                continue
            done += 1
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code >= 500:
                failures.append(f"{resp.request.method} {str(resp.request.url)[:150]}: {resp.text[:200]}")
            elif resp.status_code >= 400:
                error = resp.json().get("error")
                if not isinstance(error, str) or not error or "\n" in error:
                    failures.append(f"{resp.request.url}: not a one-line JSON error: {resp.text[:200]}")
            peak = max(peak, me.memory_info().rss)
        assert http.get("/health").status_code == 200
    growth = (peak - rss0) / 2**20
    print(f"\nfuzz: {done} requests, statuses {dict(sorted(statuses.items()))}, RSS growth {growth:.0f} MB")
    assert not failures, failures[:5]
    assert done >= 100 and len(statuses) >= 5  # the fuzz reached many kinds of answers
    assert growth < RSS_GROWTH_MB
