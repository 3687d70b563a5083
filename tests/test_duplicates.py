"""`pixdex duplicates`: exact and near-duplicate groups with a keeper, look-alikes rejected, from the
library, the CLI, the HTTP API; and the benchmark's precision/recall at a floor."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from indexer.job import index_collection
from pixdex.cli import main
from pixdex.demo.copies import read_truth, score_pairs, transform, write_duplicate_collection
from pixdex.demo.photos import Shot, jpeg_with_exif
from search.duplicates import find_duplicates


def names(group) -> list[str]:
    return [Path(i.path).name for i in group.items]


@pytest.fixture(scope="module")
def copies_store(tmp_path_factory, shapes_dir, shapes_clip):
    """Eight distinct shapes photos plus copies of two of them (exact, resized, recompressed, rotated)."""
    root = tmp_path_factory.mktemp("copies")
    photos = root / "photos"
    photos.mkdir()
    src = sorted(shapes_dir.glob("shape_*"))[:8]
    for p in src:
        shutil.copy2(p, photos / p.name)
    b = Image.open(src[1]).convert("RGB")
    (photos / f"copy-of-a{src[0].suffix}").write_bytes(src[0].read_bytes())  # an exact copy
    big = b.resize((256, 256), Image.Resampling.LANCZOS)  # the keeper: largest resolution
    (photos / "b-large.jpg").write_bytes(jpeg_with_exif(big, Shot(datetime(2024, 5, 1, 10, 0))))
    (photos / "b-small.jpg").write_bytes(transform(b, "resize", "moderate")[0])
    (photos / "b-q60.jpg").write_bytes(transform(b, "recompress", "moderate")[0])
    (photos / "b-rotated.jpg").write_bytes(transform(b, "rotate", "mild")[0])
    store = root / "store"
    index_collection([str(photos)], store, model=shapes_clip, progress=False, workers=0)
    return store, photos, src


def test_groups_exact_and_near_copies_with_a_keeper(copies_store):
    store, photos, src = copies_store
    report = find_duplicates(store)
    assert report.items == 13
    by_kind = {g.kind: g for g in report.groups}
    assert set(by_kind) == {"exact", "near"} and len(report.groups) == 2
    exact = by_kind["exact"]
    assert sorted(names(exact)) == sorted([src[0].name, f"copy-of-a{src[0].suffix}"])
    near = by_kind["near"]
    assert near.keeper.path.endswith("b-large.jpg")  # largest resolution
    assert near.keeper.taken == "2024-05-01T10:00:00"
    assert sorted(names(near)[1:]) == sorted([src[1].name, "b-q60.jpg", "b-rotated.jpg", "b-small.jpg"])
    assert report.duplicates == 5 and report.exact_pairs == 1
    assert len(list(photos.iterdir())) == 13  # nothing deleted


def test_keeper_prefers_resolution_then_earliest_capture(tmp_path, shapes_dir, shapes_clip):
    img = Image.open(sorted(shapes_dir.glob("shape_*"))[2]).convert("RGB")
    photos = tmp_path / "p"
    photos.mkdir()
    (photos / "late.jpg").write_bytes(jpeg_with_exif(img, Shot(datetime(2024, 8, 1)), quality=95))
    (photos / "early.jpg").write_bytes(jpeg_with_exif(img, Shot(datetime(2021, 8, 1)), quality=85))
    (photos / "undated.jpg").write_bytes(jpeg_with_exif(img, Shot(), quality=90))
    index_collection([str(photos)], tmp_path / "s", model=shapes_clip, progress=False, workers=0)
    (group,) = find_duplicates(tmp_path / "s").groups
    assert names(group)[0] == "early.jpg" and names(group)[-1] == "undated.jpg"


def test_files_that_changed_are_left_unchecked(tmp_path, copies_store, shapes_clip):
    store, photos, _ = copies_store
    mine = tmp_path / "store"
    shutil.copytree(store, mine)
    moved = tmp_path / "moved-away"
    shutil.move(str(photos / "b-q60.jpg"), moved)
    try:
        report = find_duplicates(mine)
    finally:
        shutil.move(str(moved), photos / "b-q60.jpg")
    near = next(g for g in report.groups if g.kind == "near")
    assert "b-q60.jpg" not in names(near) and report.unchecked >= 1


def test_empty_store_and_store_without_duplicates(tmp_path, tiny_clip, shapes_dir, capsys):
    from indexer.encoder import get_encoder
    from indexer.store import StoreWriter
    from search.searcher import Searcher

    empty = tmp_path / "empty"
    with StoreWriter(empty, get_encoder(tiny_clip, device="cpu").info):
        pass
    report = find_duplicates(empty)
    assert report.groups == [] and report.items == 0
    assert main(["duplicates", str(empty)]) == 0
    assert "no duplicates found" in capsys.readouterr().out

    distinct = tmp_path / "distinct"
    index_collection([str(shapes_dir)], distinct, model=tiny_clip, progress=False, workers=0)
    assert Searcher(distinct).count == 48
    # a random-weight model finds many candidates; the pixel check rejects them all
    loose = find_duplicates(distinct, threshold=0.5)
    assert loose.groups == [] and loose.candidates > 0 and loose.rejected == loose.candidates
    assert main(["duplicates", str(distinct), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"] == [] and out["items"] == 48 and out["duplicates"] == 0


def test_cli_json_html_and_bad_options(copies_store, tmp_path, capsys):
    store, _, _ = copies_store
    assert main(["duplicates", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [g["size"] for g in out["groups"]] == [5, 2] and out["groups"][0]["keeper"]["path"].endswith(
        "b-large.jpg"
    )
    page = tmp_path / "report" / "dups.html"
    assert main(["duplicates", str(store), "--html", str(page)]) == 0
    text = page.read_text()
    assert text.count("<figure") == 7 and text.count('class="keeper"') == 2 and "b-large.jpg" in text
    assert text.count("data:image/jpeg;base64,") == 7
    assert main(["duplicates", str(store)]) == 0
    listing = capsys.readouterr().out
    assert "keep    " in listing and listing.count("copy    ") == 5
    for argv, msg in [
        (["--threshold", "1.5"], "--threshold"),
        (["--threshold", "0"], "--threshold"),
        (["--tolerance", "-1"], "--tolerance"),
    ]:
        assert main(["duplicates", str(store), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.strip().count("\n") == 0
    assert main(["duplicates", str(store.parent / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_api_duplicates(copies_store):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pixdex.server.app import create_app

    client = TestClient(create_app(copies_store[0]), base_url="http://127.0.0.1")  # the Host check
    r = client.get("/api/duplicates")
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert [g["size"] for g in groups] == [5, 2]
    keeper = groups[0]["keeper"]
    assert client.get(f"/api/items/{keeper['id']}/thumbnail").status_code == 200
    assert len(client.get("/api/duplicates", params={"limit": 1}).json()["groups"]) == 1
    for params in ({"threshold": 2}, {"tolerance": -3}, {"limit": 0}):
        r = client.get("/api/duplicates", params=params)
        assert 400 <= r.status_code < 500 and "\n" not in r.json()["error"]


@pytest.mark.slow
def test_benchmark_two_stage_beats_the_clip_threshold(tmp_path, shapes_clip):
    """The generated benchmark at a small size: the floors the full run (BENCHMARKS.md) clears with room."""
    truth_csv = write_duplicate_collection(tmp_path / "images", originals=24, seed=5)
    index_collection([str(tmp_path / "images")], tmp_path / "store", model=shapes_clip, progress=False)
    report = find_duplicates(tmp_path / "store")
    from search.searcher import Searcher

    store = Searcher(tmp_path / "store").store
    by_name = {e.file: e for e in read_truth(truth_csv)}
    ids = store.ids()
    truth = {int(i): by_name[Path(p).name] for i, p in zip(ids, store.paths(ids))}
    moderate = score_pairs(report.pairs(), truth, "moderate")
    assert moderate.true_pairs == 8 * 15
    assert moderate.precision >= 0.99 and moderate.recall >= 0.95, moderate
    assert score_pairs(report.pairs(), truth, "mild").recall >= 0.95
    # CLIP alone at the same candidate threshold joins look-alikes: far lower precision
    baseline = score_pairs(find_duplicates(store.path, tolerance=None).pairs(), truth, "moderate")
    assert baseline.recall >= moderate.recall and baseline.precision < 0.8, baseline


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_candidate_stage_finds_the_close_pairs_through_every_index_type(tmp_path, kind):
    """Planted near-copies among clustered vectors: the index-driven candidate stage returns exactly the
    pairs above the threshold (exact cosines), whatever index the store has."""
    import numpy as np

    from indexer.encoder import ModelInfo
    from indexer.index_build import update_index
    from indexer.store import StoreWriter
    from search.duplicates import candidate_pairs
    from search.searcher import Searcher

    rng = np.random.default_rng(3)
    n, dim = 3000, 32
    centres = rng.standard_normal((30, dim))
    v = centres[rng.integers(30, size=n)] + 0.8 * rng.standard_normal((n, dim))
    planted = rng.choice(np.arange(1, n), 40, replace=False)
    v[planted] = v[planted - 1] + 0.1 * rng.standard_normal((40, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    info = ModelInfo(name="synthetic", family="clip", dim=dim, fingerprint="synthetic-32", model_type="clip")
    with StoreWriter(tmp_path / "s", info, shard_rows=1000) as w:
        w.append([{"path": f"/x/{i}.jpg", "bytes": 1, "mtime": 0.0, "width": 1, "height": 1,
                   "sha256": f"{i:064x}"}
                  for i in range(n)], v)
        w.commit()
        update_index(w, kind, log=lambda m: None)
    searcher = Searcher(tmp_path / "s")
    assert searcher.index_type == {"ivfpq": "ivfpq"}.get(kind, kind)
    found = {(int(a), int(b)) for a_, b_, _ in candidate_pairs(searcher, 0.9) for a, b in zip(a_, b_)}
    stored = searcher.store.vectors(np.arange(n)).astype(np.float64)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    sims = stored @ stored.T
    truth = {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(sims, 1) >= 0.9))}
    assert len(truth) >= 40
    assert found <= truth  # exact cosines: never a pair below the threshold
    assert len(found & truth) >= 0.95 * len(truth), (kind, len(found), len(truth))
