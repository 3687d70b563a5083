"""Hostile input to the server, the query language and the Python API (issue 15, "Server" and messages):
every attempt gets a one-line 4xx JSON error (CLI: rc 2), no file outside the store is read, nothing
stored is lost, and the server follows a re-index without a restart."""

from __future__ import annotations

import http.server
import io
import json
import os
import select
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx
from fastapi.testclient import TestClient
from serving import running

from indexer.errors import PixdexError
from pixdex.cli import main
from pixdex.server.app import create_app
from pixdex.server.limits import Limits

LIMITS = Limits(max_k=50, max_labels=5, max_upload_bytes=200_000, max_json_bytes=100_000,
                max_image_pixels=1_000_000)


def copy_store(src_images, root, model):
    """A private collection + store under root (tests below change both)."""
    from indexer.job import index_collection

    images = root / "images"
    shutil.copytree(src_images, images)
    index_collection([str(images)], root / "store", model=model, progress=False, workers=0)
    return images, root / "store"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_clip, shapes_dir):
    root = tmp_path_factory.mktemp("hostile")
    images, store = copy_store(shapes_dir, root, tiny_clip)
    app = create_app(store, limits=LIMITS)
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False), images, store


def png_bytes(size=(32, 32), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def one_line_error(resp, status: int | tuple) -> str:
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


# ---- bad bodies: 4xx with a JSON error, never a 500 ------------------------------------------------
@pytest.mark.parametrize("method,url,kwargs,status,words", [
    ("post", "/api/search", {"json": {"query": "a", "threshold": "x"}}, 422, "threshold must be a number"),
    ("post", "/api/search", {"json": {"query": "a", "threshold": 7}}, 422, "from -1 to 1"),
    ("post", "/api/search", {"json": {"id": 10**30}}, 422, "out of range"),
    ("post", "/api/search", {"json": {"id": 2**63}}, 422, "out of range"),
    ("post", "/api/search", {"json": {"id": "3"}}, 422, "whole number"),
    ("post", "/api/classify", {"json": {"ids": [10**30], "labels": ["a"]}}, 422, "out of range"),
    ("post", "/api/classify", {"json": {"ids": [1.5], "labels": ["a"]}}, 422, "whole number"),
    ("post", "/api/search", {"json": {"embedding": ["a"] * 16}}, 422, "embedding"),
    ("post", "/api/search", {"json": {"embedding": [[0.1] * 16]}}, 422, "embedding"),
    ("post", "/api/search", {"json": {"embedding": [0.1] * 3}}, 422, "dimensions"),
    ("post", "/api/search", {"json": {"embedding": [1e300] * 16}}, 422, "finite"),
    ("post", "/api/search", {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
     (400, 413), ""),
    ("post", "/api/search", {"content": b"[" * 50_000, "headers": {"content-type": "application/json"}},
     400, "not valid JSON"),
    ("post", "/api/search", {"content": b'{"id": ' + b"9" * 5000 + b"}",
                             "headers": {"content-type": "application/json"}},
     400, "not valid JSON"),
    ("get", "/api/search", {"params": {"q": "a", "where": "(" * 500 + "id = 1" + ")" * 500}}, 400, "nested"),
    ("get", "/api/search", {"params": {"q": "a", "where": "NOT " * 300 + "id = 1"}}, 400, "nested"),
    ("get", "/api/search", {"params": {"q": "a", "where": "id = 1 OR " * 2000 + "id = 2"}}, 413, "filter of"),
    ("get", "/api/search", {"params": {"q": "a", "where": "id = 99999999999999999999999"}},
     400, "out of range"),
    ("post", "/api/search", {"json": {"query": "a", "where": ["id = 1"]}}, 422, "where must be"),
    ("post", "/api/search", {"json": {"query": 5}}, 422, "query must be a string"),
    ("post", "/api/search", {"json": {"queries": "a"}}, 422, "queries must be"),
    ("post", "/api/search", {"json": {"queries": ["a", None]}}, 422, "query must be a string"),
    ("get", "/api/search", {"params": {"q": "id:99999999999999999999999"}}, 400, "out of range"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a", "b"], "template": "{0} {1}"}}, 400, "{}"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a", "b"], "template": "{x}"}}, 400, "{}"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a", "b"], "template": "{} and {}"}},
     400, "{}"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a", "b"], "template": "{:>999999999}"}},
     400, "{}"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a", "b"], "template": 5}},
     422, "not a string"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a", "b"], "top_k": "x"}}, 422, "top_k"),
    # "a, b" is a label list, as in the CLI
    ("post", "/api/classify", {"json": {"ids": [1], "labels": "a"}}, 200, ""),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": {"a": 1}}}, 422, "list of strings"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a" * 2000]}}, 413, "characters"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": []}}, 400, "empty"),
    ("post", "/api/classify", {"json": {"ids": [1], "labels": ["a", " "]}}, 400, "empty"),
    ("get", "/nope", {}, 404, "no such endpoint"),
    ("delete", "/api/search", {}, 405, "not allowed"),
    ("get", "/api/items/99999999999999999999999", {}, 422, "invalid parameter"),
    ("get", "/api/items/48/thumbnail", {}, 404, "unknown id"),
])
def test_bad_bodies_get_4xx_json_errors(served, method, url, kwargs, status, words):
    client, _, _ = served
    resp = getattr(client, method)(url, **kwargs)
    if status == 200:
        assert resp.status_code == 200, resp.text
        return
    assert words in one_line_error(resp, status)


# ---- /api/classify accepts exactly what the CLI accepts --------------------------------------------
@pytest.mark.parametrize("labels,template,words", [
    (["circle", "star"], "no placeholder", "placeholder"),
    (["circle", "circle"], None, "more than once"),
    (["circle", "star"], "{} or {}", "exactly one"),
])
def test_classify_validation_is_the_clis(served, capsys, labels, template, words):
    client, _, store = served
    resp = client.post("/api/classify", json={"ids": [0], "labels": labels, "template": template})
    http_error = one_line_error(resp, (400, 422))
    assert words in http_error
    argv = ["classify", str(store), "--labels", ",".join(labels), "--no-progress"]
    if template:
        argv += ["--template", template]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and http_error in err  # the same function refused both: the same words


@pytest.mark.parametrize("labels,template,words", [("red,red", None, "more than once"),
                                                   ("red,blue", "{x}", "exactly one")])
def test_upload_classify_validation_is_classify_images(served, capsys, labels, template, words):
    client, images, _ = served
    image = min(images.glob("*.png"))
    data = {"labels": labels, **({"template": template} if template else {})}
    up = client.post("/api/classify", files={"image": ("x.png", image.read_bytes(), "image/png")}, data=data)
    http_error = one_line_error(up, 400)
    argv = ["classify-image", str(image), "--labels", labels] + (["--template", template] if template else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err and http_error in err


def test_classify_label_bound_is_the_servers_limit(served):
    client, _, _ = served
    one_line_error(client.post("/api/classify", json={"ids": [0], "labels": list("abcdef")}), 413)
    ok = client.post("/api/classify", json={"ids": [0], "labels": list("abcde")})
    assert ok.status_code == 200 and len(ok.json()["results"][0]["labels"]) == 5


# ---- images over HTTP: uploads and stored ids only -------------------------------------------------
@pytest.mark.parametrize("q", ["image:/etc/passwd", "image:/dev/zero", "image:http://127.0.0.1:9/x.png",
                               "image:https://example.com/a.png", "2:image:/etc/hostname + a",
                               "image:data:image/png,AAAA"])
def test_http_queries_never_read_paths_or_urls(served, q):
    client, _, _ = served
    err = one_line_error(client.get("/api/search", params={"q": q}), 400)
    assert "uploads or stored ids" in err and "root:" not in err


def test_bare_paths_over_http_are_text_and_never_opened(served, tmp_path):
    client, images, _ = served
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # opening it would block this request (and, before the fix, every other one)
    existing = min(images.glob("*.png"))
    for q in (str(fifo), str(existing), "/etc/passwd"):
        resp = client.get("/api/search", params={"q": q, "k": 3})
        assert resp.status_code == 200 and resp.json()["query"] == q
        assert b"root:" not in resp.content


def test_upload_and_stored_ids_still_work(served):
    client, images, _ = served
    first = min(images.glob("*.png"))
    up = client.post("/api/search", files={"image": ("q.png", first.read_bytes(), "image/png")},
                     data={"k": "2"})
    assert up.status_code == 200 and up.json()["results"][0]["path"] == str(first)
    mix = client.get("/api/search", params={"q": 'id:3 + "a red circle"', "k": 2})
    assert mix.status_code == 200 and len(mix.json()["results"]) == 2


class _Images(http.server.BaseHTTPRequestHandler):
    """A loopback image host: /ok.png, /big.png (over the limit), /slow.png (drips bytes forever)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        if self.path == "/ok.png":
            self.wfile.write(png_bytes(color=(10, 200, 10)))
        elif self.path == "/big.png":
            self.wfile.write(b"\x89PNG" + b"0" * 400_000)
        else:
            try:
                for _ in range(600):
                    self.wfile.write(b"0")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass


@pytest.fixture
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_queries_only_when_allowed_and_bounded(tiny_store, image_host):
    from dataclasses import replace

    limits = replace(LIMITS, allow_url_queries=True, url_timeout=1.0)
    client = TestClient(create_app(tiny_store, limits=limits), base_url="http://127.0.0.1")
    ok = client.get("/api/search", params={"q": f"image:{image_host}/ok.png", "k": 3})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3
    assert "larger than" in one_line_error(client.get("/api/search",
                                                      params={"q": f"image:{image_host}/big.png"}), 400)
    err = one_line_error(client.get("/api/search", params={"q": f"image:{image_host}/slow.png"}), 400)
    assert "longer than 1 s" in err
    # still no paths
    assert "not paths" in one_line_error(client.get("/api/search", params={"q": "image:/etc/passwd"}), 400)


def test_cli_refuses_non_regular_image_files(tiny_store, tmp_path, capsys):
    fifo = tmp_path / "q.png"
    os.mkfifo(fifo)
    for target, words in ((fifo, "a FIFO (named pipe), not a regular file"),
                          ("/dev/zero", "a character device"),
                          (tmp_path, "a directory"), (tmp_path / "missing.png", "No such file")):
        assert main(["search", str(tiny_store), f"image:{target}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err and str(target) in err
    assert main(["search", str(tiny_store), "--image", "/dev/zero"]) == 2
    assert "not a regular file" in capsys.readouterr().err


# ---- bounded bodies, Host header, content types -----------------------------------------------------
def send_chunked(base: str, ctype: str, most: int, first: bytes = b"") -> tuple[int, bytes]:
    """POST a chunked body of up to `most` bytes, a chunk at a time, until the server answers:
    (bytes sent by then, the answer)."""
    host, port = base.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /api/search HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        if first:
            sock.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        chunk = b"10000\r\n" + b"[" * 65536 + b"\r\n"
        sent = 0
        while sent < most and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed while we were sending
                break
            sent += 65536
        sock.settimeout(30)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    return sent, answer


def test_chunked_bodies_are_bounded(tiny_store):
    """A body with no Content-Length is cut off at the limit and answered with 413 while the client is still
    sending (before: a 500 MB chunked body was read whole)."""
    with running(create_app(tiny_store, limits=LIMITS)) as base:
        file_part = b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for ctype, first in (("application/json", b""), ("multipart/form-data; boundary=xx", file_part)):
            sent, answer = send_chunked(base, ctype, most=200 * 2**20, first=first)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 413"), answer[:200]
            assert "exceeds" in json.loads(body)["error"]
            assert sent < 40 * 2**20  # answered after the limit plus socket buffers, not after 200 MB
        with httpx.Client(base_url=base, timeout=60) as http:
            declared = http.post("/api/search", content=b"x" * 200_000,
                                 headers={"content-type": "application/json"})
            assert "exceeds" in one_line_error(declared, 413)
            assert http.get("/health").status_code == 200


@pytest.mark.parametrize("host,status", [
    ("evil.example", 400), ("127.0.0.1.evil.example:80", 400), ("127.0.0.1:8000", 200), ("localhost", 200),
    ("LOCALHOST.:8000", 200), ("[::1]:8000", 200), ("pixdex.lan", 200), ("pixdex.lan:1234", 200),
])
def test_host_header_is_checked(tiny_store, host, status):
    client = TestClient(create_app(tiny_store, limits=LIMITS, allow_hosts=["pixdex.lan"]),
                        base_url="http://127.0.0.1")
    resp = client.get("/api/info", headers={"host": host})
    if status == 200:
        assert resp.status_code == 200
    else:
        assert "not served here" in one_line_error(resp, status)


def test_any_host_when_asked(tiny_store):
    client = TestClient(create_app(tiny_store, allow_hosts=["*"]), base_url="http://anything.example")
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("ctype",
                         ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonx"])
def test_json_only_from_json_bodies(served, ctype):
    client, _, _ = served
    headers = {"content-type": ctype} if ctype else {}
    resp = client.post("/api/search", content=json.dumps({"query": "a red circle"}), headers=headers)
    assert "application/json" in one_line_error(resp, 415)


# ---- the server follows the store -------------------------------------------------------------------
def test_serve_picks_up_each_new_generation(tmp_path, tiny_clip, shapes_dir):
    """After a re-index adds 8 and removes 4 images, the running app shows the new count, never the removed
    items, and every answer during the update comes from one whole generation."""
    images, store = copy_store(shapes_dir, tmp_path, tiny_clip)
    with running(create_app(store, limits=LIMITS)) as base, httpx.Client(base_url=base, timeout=60) as client:
        check_generations(client, images, store, tmp_path, tiny_clip)


def check_generations(client, images, store, tmp_path, tiny_clip):
    from indexer.job import index_collection
    from pixdex.demo.world import write_collection

    before = client.get("/api/info").json()
    assert before["count"] == 48
    removed_paths = sorted(images.glob("*.png"))[:4]
    by_path = {h["path"]: h["id"]
               for h in client.post("/api/search", json={"query": "x", "k": 50}).json()["results"]}
    removed = {by_path[str(p)] for p in removed_paths}
    seen, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            info = client.get("/api/info").json()
            hits = client.post("/api/search", json={"query": "a red circle", "k": 50}).json()
            if "results" not in hits or "count" not in info:
                errors.append((info, hits))
            seen.append((info.get("generation"), info.get("count")))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for p in removed_paths:
            p.unlink()
        write_collection(tmp_path / "more", count=8, seed=99)
        for p in sorted((tmp_path / "more").glob("*.*g")):
            shutil.move(str(p), images / f"new_{p.name}")
        index_collection([str(images)], store, model=tiny_clip, progress=False, workers=0)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[:2]
    after = client.get("/api/info").json()
    assert after["count"] == 48 - 4 + 8 and after["generation"] > before["generation"]
    assert client.get("/health").json()["items"] == 52
    counts = {}
    for gen, count in seen:  # one generation, one count: no answer mixed two
        counts.setdefault(gen, set()).add(count)
    assert all(len(c) == 1 for c in counts.values()), counts
    hits = client.post("/api/search", json={"query": "a red circle", "k": 50}).json()["results"]
    assert not removed & {h["id"] for h in hits} and len(hits) == 50
    for ident in removed:
        assert "unknown id" in one_line_error(client.get(f"/api/items/{ident}"), 404)
    new_ids = {h["id"] for h in hits if "/new_" in h["path"]}
    assert new_ids and all(client.get(f"/api/items/{i}").status_code == 200 for i in new_ids)


def test_an_unreadable_new_generation_keeps_the_last_one(tmp_path, tiny_clip, shapes_dir, capsys):
    _, store = copy_store(shapes_dir, tmp_path, tiny_clip)
    client = TestClient(create_app(store, limits=LIMITS), base_url="http://127.0.0.1")
    manifest = store / "manifest.json"
    good = manifest.read_bytes()
    manifest.write_bytes(good[: len(good) // 2])  # as a broken writer (or disk) would leave it
    assert client.get("/api/info").json()["count"] == 48
    assert "still serving generation" in capsys.readouterr().err
    assert client.get("/api/search", params={"q": "a red circle"}).status_code == 200
    manifest.write_bytes(good + b"\n")  # repaired: picked up again
    assert client.get("/api/info").json()["count"] == 48


# ---- read-only stores -------------------------------------------------------------------------------
def test_thumbnails_of_a_store_that_cannot_be_written(tmp_path, tiny_clip, shapes_dir, monkeypatch):
    """STORE/cache unwritable (here: a file in its way, which also stops root): the user cache is used;
    that one unwritable too: thumbnails are made per request, never a 500."""
    _, store = copy_store(shapes_dir, tmp_path, tiny_clip)
    (store / "cache").write_text("not a folder")
    monkeypatch.setenv("PIXDEX_CACHE", str(tmp_path / "user-cache"))
    client = TestClient(create_app(store, limits=LIMITS), base_url="http://127.0.0.1")
    resp = client.get("/api/items/3/thumbnail")
    assert resp.status_code == 200 and Image.open(io.BytesIO(resp.content)).size[0] <= 256
    assert list((tmp_path / "user-cache" / "thumbs").glob("*.jpg"))
    (tmp_path / "blocked").write_text("")
    monkeypatch.setenv("PIXDEX_CACHE", str(tmp_path / "blocked"))
    client = TestClient(create_app(store, limits=LIMITS), base_url="http://127.0.0.1")
    assert client.get("/api/items/4/thumbnail").status_code == 200
    assert client.app.state.service.thumbnails is None


READ_ONLY_CHECK = """
import json, os, sys
from fastapi.testclient import TestClient
from pixdex.server.app import create_app
client = TestClient(create_app(sys.argv[1]), base_url="http://127.0.0.1")
got = {u: client.get(u).status_code for u in ("/api/info", "/api/items/3/thumbnail", "/api/items/3/image",
                                              "/api/search?q=a+red+circle", "/api/items/3/thumbnail")}
print(json.dumps({"status": got, "thumbnails": str(client.app.state.service.thumbnails)}))
"""


def test_serve_on_a_read_only_store(tmp_path_factory, tiny_clip, shapes_dir):
    """A store its user cannot write (chmod a-w; as root the server runs as nobody, since root writes anyway):
    search, items and thumbnails answer 200, thumbnails are cached in the user's cache, the store is
    untouched."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="pixdex-ro-"))  # not under pytest's 0700 folder: nobody must read it
    try:
        shutil.copytree(tiny_clip, root / "model")
        _, store = copy_store(shapes_dir, root, str(root / "model"))
        (root / "home").mkdir()
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))
        for p in [store, *store.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
        env = {**os.environ, "HOME": str(root / "home"), "PIXDEX_CACHE": str(root / "home" / "cache"),
               "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-c", READ_ONLY_CHECK, str(store)]
        if os.geteuid() == 0:
            os.chown(root / "home", 65534, 65534)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
            probe = subprocess.run([*cmd[:4], sys.executable, "-c", "import pixdex.server.app"], env=env,
                                   capture_output=True, timeout=120)
            if probe.returncode != 0:
                pytest.skip("the code or the Python of this checkout cannot be read by user nobody")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert set(result["status"].values()) == {200}, result
        assert result["thumbnails"] == str(root / "home" / "cache" / "thumbs")
        assert list((root / "home" / "cache" / "thumbs").glob("*.jpg"))
        assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o700)
        shutil.rmtree(root, ignore_errors=True)


# ---- the CLI and the Python API: one-line errors -----------------------------------------------------
@pytest.mark.parametrize("where,words", [
    ("id = 99999999999999999999999", "out of range"),
    ("(" * 500 + "id = 1" + ")" * 500, "nested more than"),
    ("id = 1 OR " * 2000 + "id = 2", "exceeds the limit"),
])
def test_cli_where_errors_are_one_line(tiny_store, capsys, where, words):
    assert main(["search", str(tiny_store), "a red circle", "--where", where]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err and len(err) < 400


@pytest.fixture(scope="module")
def tagged_store(tmp_path_factory, tiny_clip, shapes_dir):
    from classify.tagging import tag_store

    _, store = copy_store(shapes_dir, tmp_path_factory.mktemp("tagged"), tiny_clip)
    tag_store(store, ["circle", "star"], save_as="shape_pred", progress=False)
    return store


@pytest.mark.parametrize("name", ["ID", "WIDTH", "Path", "shape_pred_score", "Shape_Pred", "sha256"])
def test_tag_names_that_shadow_columns_are_refused(tagged_store, capsys, name):
    from classify.tagging import tag_store
    from indexer.store import Store

    store = tagged_store
    before = Store.open(store).manifest
    assert main(["classify", str(store), "--labels", "circle,star", "--save-as", name, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--save-as" in err
    with pytest.raises(PixdexError, match="--save-as"):
        tag_store(store, ["circle"], save_as=name, progress=False)
    assert Store.open(store).manifest == before  # nothing written
    tag_store(store, ["circle", "square"], save_as="shape_pred", progress=False)  # replacing itself is fine


def test_python_api_errors_are_plain_value_and_type_errors(tiny_store):
    from indexer.store import Store
    from search.searcher import Searcher

    s = Searcher(tiny_store)
    cases = [
        (lambda: s.more_like(10**30), ValueError, "out of range"),
        (lambda: s.more_like(None), TypeError, "whole number"),
        (lambda: s.search_text(None), TypeError, "string"),
        (lambda: s.search_text(["a", 3]), TypeError, "string"),
        (lambda: s.search_embedding(["a"] * 16), TypeError, "numbers"),
        (lambda: s.search_embedding([[1, 2], [3]]), TypeError, "numbers"),
        (lambda: s.search_embedding(np.ones(64)), ValueError, "dimensions"),
        (lambda: s.search_embedding(np.full(16, np.nan)), ValueError, "finite"),
        (lambda: s.search("a", threshold="x"), ValueError, "threshold"),
        (lambda: s.search(None), TypeError, "unsupported query"),
        (lambda: s.search("a", where=5), TypeError, "filter"),
        (lambda: Store.open(tiny_store).paths([10**30]), ValueError, "64-bit"),
        (lambda: Store.open(tiny_store).vectors([2**64]), ValueError, "64-bit"),
    ]
    for call, kind, words in cases:
        with pytest.raises(kind) as err:
            call()
        assert isinstance(err.value, PixdexError) and words in str(err.value) and "\n" not in str(err.value)


def test_a_file_whose_name_is_not_utf8_is_served(tmp_path, tiny_clip, shapes_dir):
    """Stored escaped (the store's path_raw), served by its real name, hash-checked like any other."""
    from indexer.job import index_collection

    images = tmp_path / "images"
    images.mkdir()
    source = min(shapes_dir.glob("*.png"))
    raw = os.path.join(os.fsencode(images), b"bad\xff\xfename.png")
    with open(raw, "wb") as fh:
        fh.write(source.read_bytes())
    index_collection([str(images)], tmp_path / "store", model=tiny_clip, progress=False, workers=0)
    client = TestClient(create_app(tmp_path / "store", limits=LIMITS), base_url="http://127.0.0.1")
    assert client.get("/api/info").json()["count"] == 1
    resp = client.get("/api/items/0/image")
    assert resp.status_code == 200 and resp.content == source.read_bytes()
    assert client.get("/api/items/0/thumbnail").status_code == 200
