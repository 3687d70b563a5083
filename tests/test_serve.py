"""HTTP API: records like the CLI's --json, clear errors with the right status, bounds, safe file serving."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from pixdex.server.app import create_app
from pixdex.server.limits import Limits


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_clip, shapes_dir):
    """A private copy of a small collection + store (tests below tamper with files)."""
    from indexer.job import index_collection

    root = tmp_path_factory.mktemp("served")
    images = root / "images"
    shutil.copytree(shapes_dir, images)
    store = root / "store"
    index_collection([str(images)], store, model=tiny_clip, progress=False, workers=0)
    limits = Limits(max_k=50, max_labels=5, max_upload_bytes=200_000, max_image_pixels=1_000_000)
    return TestClient(create_app(store, limits=limits), base_url="http://127.0.0.1"), root


def png_bytes(size=(64, 64), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_health_info_and_page(served):
    client, _ = served
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/api/info").json()
    assert info["count"] == 48 and info["index"]["type"] == "flat"
    assert client.get("/").text.startswith("<!doctype html>")
    assert client.get("/docs").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_search_records_match_cli_json_shape(served):
    client, _ = served
    out = client.get("/api/search", params={"q": "a red circle", "k": 5}).json()
    hits = out["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert set(hits[0]) == {"rank", "id", "path", "score"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    post = client.post("/api/search", json={"query": "a red circle", "k": 5}).json()["results"]
    assert [h["id"] for h in post] == [h["id"] for h in hits]


def test_search_by_id_upload_and_embedding(served):
    client, root = served
    like = client.post("/api/search", json={"id": 3, "k": 4}).json()["results"]
    assert len(like) == 4 and all(h["id"] != 3 for h in like)
    first = sorted((root / "images").glob("*.png"))[0]
    up = client.post("/api/search", files={"image": ("q.png", first.read_bytes(), "image/png")},
                     data={"k": "3"})
    assert up.status_code == 200
    assert up.json()["results"][0]["path"] == str(first)  # the image finds itself first
    dim = client.get("/api/info").json()["dim"]
    emb = client.post("/api/search", json={"embedding": [0.1] * dim, "k": 2}).json()["results"]
    assert len(emb) == 2


def test_classify_stored_ids_and_upload(served):
    client, _ = served
    out = client.post("/api/classify", json={"ids": [0, 1, 2], "labels": ["circle", "square", "star"]}).json()
    assert [r["id"] for r in out["results"]] == [0, 1, 2]
    for r in out["results"]:
        assert sorted(x["label"] for x in r["labels"]) == ["circle", "square", "star"]
        assert abs(sum(x["score"] for x in r["labels"]) - 1) < 1e-4  # CLIP: softmax over labels
    up = client.post("/api/classify", files={"image": ("x.png", png_bytes(), "image/png")},
                     data={"labels": "red,blue"}).json()
    assert {x["label"] for x in up["labels"]} == {"red", "blue"}


@pytest.mark.parametrize("method,url,kwargs,status", [
    ("get", "/api/search", {"params": {"q": "x", "k": 51}}, 422),  # k over the limit
    ("get", "/api/search", {"params": {"q": "x", "k": 0}}, 422),
    ("get", "/api/search", {"params": {"q": "x", "k": "ten"}}, 422),
    ("get", "/api/search", {"params": {"q": "   "}}, 400),  # empty query
    ("get", "/api/search", {"params": {"q": "x" * 1001}}, 413),  # query too long
    ("get", "/api/search", {"params": {"q": "x", "where": "nosuchcol = 1"}}, 400),
    ("post", "/api/search", {"json": {"nothing": 1}}, 400),
    ("post", "/api/search", {"content": b"not json", "headers": {"content-type": "application/json"}}, 400),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": []}}, 400),  # empty label list
    ("post", "/api/classify", {"json": {"ids": [1], "labels": [1, 2]}}, 422),  # non-string labels
    ("post", "/api/classify", {"json": {"ids": [1], "labels": list("abcdef")}}, 413),  # too many labels
    ("post", "/api/classify", {"json": {"ids": [10_000], "labels": ["a"]}}, 404),
    ("get", "/api/items/48", {}, 404),  # one past the end
    ("get", "/api/items/-1", {}, 404),
    ("get", "/api/items/abc", {}, 422),
    ("get", "/api/items/99999999999999999999999", {}, 422),
])
def test_errors_are_json_with_the_right_status(served, method, url, kwargs, status):
    client, _ = served
    resp = getattr(client, method)(url, **kwargs)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] and "\n" not in body["error"]


def test_upload_limits(served):
    client, _ = served
    big = os.urandom(300_000)
    resp = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
    assert resp.status_code == 413
    huge = png_bytes(size=(2000, 2000))  # 4 Mpx > the 1 Mpx limit, but a small file
    resp = client.post("/api/search", files={"image": ("huge.png", huge, "image/png")})
    assert resp.status_code == 400 and "too large" in resp.json()["error"]
    resp = client.post("/api/search", files={"image": ("bad.png", b"not an image", "image/png")})
    assert resp.status_code == 400 and "decode" in resp.json()["error"]


def test_only_store_files_are_served(served, tmp_path):
    client, root = served
    # Traversal: URLs take ids, never paths.
    for url in ["/api/items/..%2F..%2Fetc%2Fpasswd/image", "/api/items/../../etc/passwd",
                "/static/../../etc/passwd", "/static/..%2F..%2Fetc%2Fpasswd"]:
        resp = client.get(url)
        assert resp.status_code in (404, 422), url
        assert b"root:" not in resp.content
    # A stored file swapped for a symlink out of the collection is refused, not followed.
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    item = client.get("/api/items/5").json()
    os.replace(item["path"], str(tmp_path / "moved"))
    os.symlink(secret, item["path"])
    for suffix in ("image", "thumbnail"):
        resp = client.get(f"/api/items/5/{suffix}")
        assert resp.status_code == 404 and b"top secret" not in resp.content
    # An untouched item is served, with an image content type; thumbnails are cached in the store.
    ok = client.get("/api/items/6/image")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("image/")
    thumb = client.get("/api/items/6/thumbnail")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    store_dir = root / "store"
    assert list((store_dir / "cache" / "thumbs").glob("*.jpg"))


def test_serve_binds_loopback_by_default(tiny_store):
    from pixdex.cli import build_parser

    args = build_parser().parse_args(["serve", str(tiny_store)])
    assert args.host == "127.0.0.1"
