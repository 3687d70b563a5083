"""Photo libraries: capture time, camera and place from EXIF into the store; filters and sorting on them
from the Python API, the CLI and the HTTP API; older stores gain the columns without re-encoding."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexer.exif import PHOTO_COLUMNS
from indexer.job import index_collection
from indexer.store import Store
from pixdex.cli import main
from pixdex.demo.photos import Shot, jpeg_with_exif
from search.searcher import Searcher

PARIS, LONDON = (48.8584, 2.2945), (51.5007, -0.1246)
SHOTS = {
    "a.jpg": Shot(datetime(2024, 6, 3, 9, 0), None, "Google", "Pixel 8", "Pixel 8 back camera", PARIS),
    "b.jpg": Shot(datetime(2024, 7, 1, 18, 30), None, "Google", "Pixel 7", None, LONDON),
    "c.jpg": Shot(datetime(2023, 12, 25, 8, 0), None, "Canon", "Canon EOS R5", "RF24-105mm F4 L IS USM"),
    "d.jpg": Shot(datetime(2024, 6, 10, 23, 15), "+02:00", "Google", "Pixel 8", None, (48.86, 2.35), 6),
}


def write_album(folder: Path, shapes_dir: Path) -> Path:
    """Four photos with EXIF, one without, and one whose EXIF is malformed."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(shapes_dir.glob("shape_*"))
    for (name, shot), src in zip(SHOTS.items(), sources):
        (folder / name).write_bytes(jpeg_with_exif(Image.open(src), shot))
    Image.open(sources[4]).convert("RGB").save(folder / "e.png")
    bad = jpeg_with_exif(Image.open(sources[5]), Shot(datetime(2024, 6, 5), None, "Google", "Pixel 8"))
    (folder / "f.jpg").write_bytes(bad.replace(b"2024:06:05 00:00:00", b"0000:00:00 00:00:00"))
    return folder


@pytest.fixture(scope="module")
def album_store(tmp_path_factory, shapes_dir, tiny_clip):
    root = tmp_path_factory.mktemp("album")
    album = write_album(root / "album", shapes_dir)
    summary = index_collection([str(album)], root / "store", model=tiny_clip, progress=False, workers=0)
    return root / "store", album, summary


def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


def test_photo_columns_are_stored_and_bad_exif_is_counted(album_store):
    store_dir, album, summary = album_store
    assert summary.indexed == 6 and summary.failed == 0
    assert summary.metadata_warnings == 1  # f.jpg: bad dates, indexed all the same
    assert summary.line().endswith("; 1 with unreadable photo metadata")
    meta = {Path(r["path"]).name: r for r in Store.open(store_dir).metadata().to_pylist()}
    assert set(PHOTO_COLUMNS) <= set(meta["a.jpg"])
    a, d = meta["a.jpg"], meta["d.jpg"]
    assert a["taken"] == datetime(2024, 6, 3, 9, 0) and a["taken_offset"] is None
    assert (a["camera_make"], a["camera_model"], a["lens"]) == ("Google", "Pixel 8", "Pixel 8 back camera")
    assert a["gps_lat"] == pytest.approx(PARIS[0], abs=1e-5) and a["gps_lon"] == pytest.approx(
        PARIS[1], abs=1e-5
    )
    assert meta["b.jpg"]["gps_lon"] == pytest.approx(LONDON[1], abs=1e-5)  # west is negative
    assert d["taken_offset"] == "+02:00" and d["orientation"] == 6
    assert (d["width"], d["height"]) == (128, 128)
    assert meta["e.png"]["taken"] is None and meta["e.png"]["camera_model"] is None
    assert meta["f.jpg"]["taken"] is None and meta["f.jpg"]["camera_model"] == "Pixel 8"
    assert all(r["mtime"] > 0 for r in meta.values())  # the file time stays a column of its own


def test_date_and_camera_filter_near_and_sort(album_store):
    store_dir, _, _ = album_store
    s = Searcher(store_dir)
    hits = s.search("a red circle", k=10, where="taken >= '2024-06-01' AND camera_model LIKE 'Pixel%'")
    assert sorted(names(hits)) == ["a.jpg", "b.jpg", "d.jpg"]
    assert sorted(names(s.search("a red circle", k=10, where="taken < '2024'"))) == ["c.jpg"]
    assert sorted(names(s.search("x", k=10, where="NEAR(48.8566, 2.3522, 10)"))) == ["a.jpg", "d.jpg"]
    assert sorted(names(s.search("x", k=10, where="NOT NEAR(48.8566, 2.3522, 10)"))) == ["b.jpg"]
    oldest = s.search("a red circle", k=10, sort="taken")
    assert names(oldest)[:4] == ["c.jpg", "a.jpg", "d.jpg", "b.jpg"]  # undated photos come last
    assert set(names(oldest)[4:]) == {"e.png", "f.jpg"}
    newest = s.search("a red circle", k=10, sort="-taken")
    assert names(newest)[:4] == ["b.jpg", "d.jpg", "a.jpg", "c.jpg"]
    assert newest[1].values["taken"] == "2024-06-10T23:15:00+02:00"
    # the relevant results are the top k by score; sorting only reorders them
    top3 = s.search("a red circle", k=3)
    assert sorted(names(s.search("a red circle", k=3, sort="taken"))) == sorted(names(top3))
    assert sorted(h.rank for h in s.search("a red circle", k=3, sort="-taken")) == [1, 2, 3]


def test_bad_filters_and_sorts_are_one_line_errors(album_store):
    from indexer.errors import PixdexError

    s = Searcher(album_store[0])
    for where, msg in [
        ("taken >= 'June'", "holds times"),
        ("taken >= 2024", "holds times"),
        ("NEAR(95, 2, 10)", "latitude 95 is out of range"),
        ("NEAR(48, 2)", "expected ','"),
        ("NEAR(48, 2, 0)", "out of range"),
    ]:
        with pytest.raises(PixdexError, match=msg):
            s.search("x", k=3, where=where)
    with pytest.raises(PixdexError, match="cannot sort by 'nope'"):
        s.search("x", k=3, sort="-nope")


def test_cli_where_near_and_sort(album_store, capsys):
    store_dir, _, _ = album_store
    rc = main(
        [
            "search",
            str(store_dir),
            "a red circle",
            "--where",
            "camera_make = 'Google'",
            "--near",
            "48.8566,2.3522,10",
            "--sort",
            "-taken",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [Path(r["path"]).name for r in out[0]] == ["d.jpg", "a.jpg"]
    assert out[0][0]["taken"] == "2024-06-10T23:15:00+02:00"
    assert main(["search", str(store_dir), "x", "--sort", "taken"]) == 0
    table = capsys.readouterr().out
    assert "taken" in table.splitlines()[1] and "2023-12-25T08:00:00" in table
    for argv, msg in [
        (["--near", "48.8,north,5"], "expected LAT,LON,KM"),
        (["--near", "48,2,-1"], "out of range"),
        (["--where", "taken > 'soon'"], "holds times"),
        (["--sort", "colour"], "cannot sort by"),
    ]:
        assert main(["search", str(store_dir), "x", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and err.count("\n") == 0


def test_api_where_sort_and_dates(album_store):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pixdex.server.app import create_app

    client = TestClient(create_app(album_store[0]), base_url="http://127.0.0.1")  # the Host check
    body = {
        "query": "a red circle",
        "k": 10,
        "where": "taken >= '2024-06-01' AND camera_model LIKE 'Pixel%'",
        "sort": "taken",
        "columns": ["taken"],
    }
    r = client.post("/api/search", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [Path(h["path"]).name for h in res] == ["a.jpg", "d.jpg", "b.jpg"]
    assert res[0]["taken"] == "2024-06-03T09:00:00"
    r = client.get(
        "/api/search", params={"q": "x", "k": 10, "where": "NEAR(51.5, -0.12, 5)", "sort": "-taken"}
    )
    assert [Path(h["path"]).name for h in r.json()["results"]] == ["b.jpg"]
    r = client.post("/api/search", json={**body, "sort": "-bogus"})
    assert r.status_code == 400 and "cannot sort by" in r.json()["error"]
    r = client.post("/api/search", json={**body, "columns": ["taken"] * 40})
    assert r.status_code == 400 and "limit" in r.json()["error"]
    assert "taken" in client.get("/api/info").json()["columns"]


def strip_photo_columns(store_dir: Path) -> None:
    """Make a store look like one written before photo columns existed (same files, older schema)."""
    for f in (store_dir / "shards").glob("meta-*.parquet"):
        table = pq.read_table(f)
        pq.write_table(table.drop_columns([c for c in PHOTO_COLUMNS if c in table.column_names]), f)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest.pop("files", None)  # such stores had no checksums either (the rewritten files would not match)
    (store_dir / "manifest.json").write_text(json.dumps(manifest))


def test_older_store_gains_the_columns_without_reencoding(tmp_path, album_store, tiny_clip):
    store_dir, album, _ = album_store
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    strip_photo_columns(store)
    before = Store.open(store)
    assert "taken" not in before.metadata().column_names
    emb_files = [s["embeddings"] for s in before.manifest["shards"]]
    ids, emb = before.embeddings()

    touched = (
        album / "a.jpg"
    )  # a touched file (same bytes, new mtime) is read, not re-encoded, in the same run
    mtime = touched.stat().st_mtime
    os.utime(touched, (mtime + 60, mtime + 60))
    try:
        summary = index_collection([str(album)], store, model=tiny_clip, progress=False, workers=0)
    finally:
        os.utime(touched, (mtime, mtime))
    assert summary.encoded == 0 and summary.indexed == 0 and summary.unchanged == 6
    assert summary.photo_filled == 5 and summary.metadata_warnings == 1
    after = Store.open(store)
    assert [s["embeddings"] for s in after.manifest["shards"]] == emb_files
    ids2, emb2 = after.embeddings()
    assert (ids2 == ids).all() and (emb2 == emb).all()
    meta = {Path(r["path"]).name: r for r in after.metadata().to_pylist()}
    assert (
        meta["d.jpg"]["taken"] == datetime(2024, 6, 10, 23, 15) and meta["b.jpg"]["camera_model"] == "Pixel 7"
    )
    assert meta["a.jpg"]["camera_model"] == "Pixel 8" and meta["a.jpg"]["mtime"] == mtime + 60
    hits = Searcher(store).search("x", k=10, where="taken >= '2024-06-01' AND camera_model LIKE 'Pixel%'")
    assert sorted(names(hits)) == ["a.jpg", "b.jpg", "d.jpg"]
    again = index_collection([str(album)], store, model=tiny_clip, progress=False, workers=0)
    assert again.photo_filled == 0 and again.encoded == 0  # filled once
