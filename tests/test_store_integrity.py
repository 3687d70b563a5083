"""A store that checks itself: odd file names, lost manifest entries, damaged files, disk full, read-only."""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_shapes
from PIL import Image
from test_index_job import unprivileged

from indexer.errors import PixdexError, StoreDamaged
from indexer.job import index_collection
from indexer.store import Store
from pixdex.cli import main

PIXDEX = [sys.executable, "-m", "pixdex"]
BAD_NAME = b"bad\xff\xfename.png"


@pytest.fixture
def photos(tmp_path, shapes_dir) -> Path:
    """A writable copy of 12 shapes-world images."""
    return copy_shapes(shapes_dir, tmp_path / "photos", 12)


def run(sources, store, encoder, **kw):
    return index_collection([str(s) for s in sources], store, model=encoder, progress=False, workers=0, **kw)


@pytest.fixture
def store(tmp_path, photos, tiny_encoder) -> Path:
    """12 items in 3 shards of 4 rows, one tag set."""
    import pyarrow as pa

    from indexer.store import StoreWriter

    out = tmp_path / "s.pixdex"
    run([photos], out, tiny_encoder, shard_rows=4, batch_size=4)
    ids = Store.open(out).ids()
    with StoreWriter(out) as w:
        w.write_tags("parity", pa.table({"id": ids, "parity": np.where(ids % 2 == 0, "even", "odd")}))
    return out


def rows_of(store_dir) -> dict[str, tuple[int, np.ndarray]]:
    s = Store.open(store_dir)
    ids, emb = s.embeddings()
    return {p: (int(i), e) for p, i, e in zip(s.paths(ids), ids, emb)}


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # only what this command prints
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, name: str) -> None:
    """One line from pixdex saying what is wrong (libraries' own warnings, e.g. at model load, aside)."""
    lines = [line for line in err.strip().splitlines() if line.startswith("pixdex")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "error" in lines[0] and name in lines[0], lines[0]


def manifest(store_dir) -> dict:
    return json.loads((store_dir / "manifest.json").read_text())


def shard_file(store_dir, k: int, kind: str = "embeddings") -> Path:
    return store_dir / manifest(store_dir)["shards"][k][kind]


# ---- file names that are not UTF-8 ---------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_stored_losslessly_and_reruns_are_stable(tmp_path, photos, tiny_clip,
                                                                                capsys):
    Image.new("RGB", (48, 48), (200, 30, 30)).save(os.fsencode(photos) + b"/" + BAD_NAME, format="PNG")
    (Path(os.fsencode(photos).decode("utf-8", "surrogateescape")) / "broken\udcff.jpg").write_bytes(b"nope")
    store = tmp_path / "s.pixdex"
    args = ["index", photos, "--out", store, "--model", tiny_clip, "--workers", "0", "--no-progress",
            "--json"]
    rc, out, err = cli(capsys, *args)
    assert rc == 0, err
    summary = json.loads(out)
    assert (summary["indexed"], summary["failed"], summary["count"]) == (13, 1, 13)
    s = Store.open(store)
    shown = [p for p in s.metadata()["path"].to_pylist() if "bad" in p]
    assert shown == [str(photos / "bad\\xff\\xfename.png")]  # printable: the bytes escaped
    meta = s.metadata().to_pydict()
    bad_id = meta["id"][meta["path"].index(shown[0])]
    [real] = s.file_paths([bad_id])
    assert os.fsencode(real) == os.fsencode(photos) + b"/" + BAD_NAME and os.path.isfile(real)
    assert [Path(p).name for p in s.errors()["path"].to_pylist()] == ["broken\\xff.jpg"]

    rc, out, err = cli(capsys, *args)  # again: nothing re-encoded, nothing duplicated
    again = json.loads(out)
    assert rc == 0 and (again["unchanged"], again["encoded"], again["failed"],
                        again["count"]) == (13, 0, 1, 13)
    assert len(Store.open(store).errors()) == 1

    rc, out, err = cli(capsys, "search", store, f"id:{bad_id}", "-k", "1", "--paths-only", "--model",
                       tiny_clip)
    assert rc == 0 and out.strip() == shown[0], err
    rc, out, err = cli(capsys, "info", store, "--errors")
    assert rc == 0 and "broken\\xff.jpg" in out
    res = subprocess.run([*PIXDEX, "search", str(store), f"id:{bad_id}", "-k", "1", "--json", "--model",
                          tiny_clip],
                         capture_output=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0][0]["path"] == shown[0]


# ---- the manifest: recorded facts, lost entries ---------------------------------------------------
def test_manifest_records_rows_dtype_and_checksums_of_every_file(store, capsys):
    m = manifest(store)
    named = {f for s in m["shards"] for f in (s["embeddings"], s["metadata"])} | set(m["tags"].values())
    named |= {m["index"]["file"]}
    assert set(m["files"]) == named
    for rel, rec in m["files"].items():
        data = (store / rel).read_bytes()
        assert rec["bytes"] == len(data) and rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert [(s["rows"], s["dtype"], s["dim"]) for s in m["shards"]] == [(4, "float16", m["dim"])] * 3
    assert m["next_shard"] == 3
    rc, out, err = cli(capsys, "repair", store)
    assert rc == 0 and "healthy: nothing to repair (12 items)" in out
    assert manifest(store) == m  # a healthy store is not rewritten


def test_a_lost_shard_entry_is_refused_never_overwritten_and_repaired(store, photos, tiny_clip, capsys):
    baseline = rows_of(store)
    m = manifest(store)
    lost = m["shards"].pop(1)
    (store / "manifest.json").write_text(json.dumps(m))
    on_disk = {p: p.read_bytes() for p in (store / "shards").iterdir()}
    Image.new("RGB", (40, 40), (0, 200, 0)).save(photos / "new.png")

    rc, out, err = cli(capsys, "index", photos, "--out", store, "--model", tiny_clip, "--workers", "0",
                       "--no-progress")
    assert rc == 2 and "unchanged" not in out
    one_line_error(err, "manifest.json")
    assert "no shard holds ids 4..7" in err
    assert {p: p.read_bytes() for p in (store / "shards").iterdir()} == on_disk  # nothing overwritten

    rc, out, err = cli(capsys, "repair", store, "--no-progress")
    assert rc == 0 and "repaired" in out, err
    _same_rows(rows_of(store), baseline)
    assert manifest(store)["shards"][1]["embeddings"] == lost["embeddings"]  # the orphan shard was re-adopted
    rc, out, err = cli(capsys, "index", photos, "--out", store, "--model", tiny_clip, "--workers", "0",
                       "--no-progress", "--shard-size", "4", "--json")
    assert rc == 0 and json.loads(out)["indexed"] == 1 and json.loads(out)["count"] == 13
    names = [s["embeddings"] for s in manifest(store)["shards"]]
    assert len(set(names)) == 4 and names[-1] not in on_disk and (store / names[-1]).is_file()
    assert on_disk[store / names[1]] == (store / names[1]).read_bytes()


def _same_rows(a, b) -> bool:
    assert {p: i for p, (i, _) in a.items()} == {p: i for p, (i, _) in b.items()}
    assert all(np.allclose(a[p][1], b[p][1], atol=2e-3) for p in a)
    return True


def test_new_shards_never_take_the_name_of_a_file_on_disk(tmp_path):
    from indexer.encoder import ModelInfo
    from indexer.store import StoreWriter

    info = ModelInfo("m", "clip", 4, "f00dfeed00000000", "clip")
    path = tmp_path / "s"
    vec = np.eye(4, dtype=np.float32)[:1]
    with StoreWriter(path, info) as w:
        w.append([{"path": "/a", "bytes": 1, "mtime": 1.0, "width": 1, "height": 1, "sha256": "a"}], vec)
    orphan = path / "shards" / "emb-000000.npy"
    kept = orphan.read_bytes()
    m = manifest(path)  # a damaged manifest that lost its only entry but still counts the shard
    m["shards"] = []
    m["gaps"] = [[0, 1]]
    m["counts"] = {"rows": 0, "items": 0, "deleted": 0, "errors": 0}
    (path / "manifest.json").write_text(json.dumps(m))
    with StoreWriter(path, info) as w:
        w.append([{"path": "/b", "bytes": 1, "mtime": 1.0, "width": 1, "height": 1, "sha256": "b"}], vec)
    assert manifest(path)["shards"][0]["embeddings"] == "shards/emb-000001.npy"
    assert orphan.read_bytes() == kept  # the unnamed committed shard was neither swept nor overwritten


# ---- damaged files ---------------------------------------------------------------------------------
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garble(p: Path) -> None:
    p.write_bytes(bytes(255 - b for b in p.read_bytes()))  # same size, other content


def _swap(store_dir: Path) -> Path:
    a, b = shard_file(store_dir, 0), shard_file(store_dir, 1)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return a


DAMAGE = {
    "manifest-truncated": (lambda s: _truncate(s / "manifest.json") or s / "manifest.json"),
    "manifest-garbled": (lambda s: _garble(s / "manifest.json") or s / "manifest.json"),
    "manifest-empty": (lambda s: (s / "manifest.json").write_bytes(b"") or s / "manifest.json"),
    "embeddings-truncated": (lambda s: _truncate(shard_file(s, 1)) or shard_file(s, 1)),
    "embeddings-swapped": _swap,
    "embeddings-garbage": (lambda s: _garble(shard_file(s, 1)) or shard_file(s, 1)),
    "embeddings-missing": (lambda s: shard_file(s, 2).unlink() or shard_file(s, 2)),
    "metadata-garbage": (lambda s: _garble(shard_file(s, 1, "metadata")) or shard_file(s, 1, "metadata")),
    "metadata-missing": (lambda s: shard_file(s, 0, "metadata").unlink() or shard_file(s, 0, "metadata")),
    "tags-garbage": (lambda s: _garble(s / manifest(s)["tags"]["parity"])
                     or s / manifest(s)["tags"]["parity"]),
    "faiss-missing": (lambda s: (s / manifest(s)["index"]["file"]).unlink()
                      or s / manifest(s)["index"]["file"]),
    "faiss-corrupt": (lambda s: _garble(s / manifest(s)["index"]["file"])
                      or s / manifest(s)["index"]["file"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_a_one_line_error_naming_the_file_and_repair_rebuilds(store, photos, tiny_clip, capsys,
                                                                        damage):
    baseline = rows_of(store)
    victim = DAMAGE[damage](store)
    name = victim.name

    rc, out, err = cli(capsys, "info", store)
    assert rc == 2 and "items" not in out  # info does not look healthy
    one_line_error(err, name)
    rc, out, err = cli(capsys, "search", store, "id:3", "--where", "parity = 'odd'", "--model", tiny_clip)
    assert rc == 2
    one_line_error(err, name)
    rc, out, err = cli(capsys, "index", photos, "--out", store, "--model", tiny_clip, "--workers", "0",
                       "--no-progress")
    assert rc == 2 and "unchanged" not in out
    one_line_error(err, name)

    rc, out, err = cli(capsys, "repair", store, "--no-progress", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["problems"] and any(name in line for line in report["problems"] + report["actions"])
    rc, out, err = cli(capsys, "info", store, "--check")
    assert rc == 0 and "healthy" in out, err
    after = rows_of(store)
    if damage.startswith("metadata"):  # its rows cannot be attributed to files: dropped, then embedded again
        assert report["dropped_rows"] == 4 and len(after) == 8
        rc, out, err = cli(capsys, "index", photos, "--out", store, "--model", tiny_clip, "--workers", "0",
                           "--no-progress", "--json")
        assert rc == 0 and json.loads(out)["indexed"] == 4
        after = rows_of(store)
        assert {p: e for p, (_, e) in after.items()}.keys() == baseline.keys()
        assert all(np.allclose(after[p][1], baseline[p][1], atol=2e-3) for p in baseline)
    else:
        _same_rows(after, baseline)
    if damage.startswith("embeddings"):
        assert report["reembedded"] == 8 if damage == "embeddings-swapped" else report["reembedded"] == 4
    if damage in ("embeddings-truncated", "embeddings-garbage", "metadata-garbage"):
        assert (store / "damaged" / "shards" / name).is_file()  # set aside, not deleted
    tags = Store.open(store).tag_sets()
    assert tags == ([] if damage == "tags-garbage" else ["parity"])
    live = int(Store.open(store).ids()[-1])
    rc, out, err = cli(capsys, "search", store, f"id:{live}", "-k", "3", "--model", tiny_clip, "--json")
    assert rc == 0 and json.loads(out)[0][0]["id"] == live


def test_swapped_shards_never_give_silent_results_from_the_python_api(store):
    _swap(store)
    s = Store.open(store)  # sizes match: opening is cheap and succeeds...
    with pytest.raises(StoreDamaged, match="emb-000000.npy: its content is not what the manifest recorded"):
        s.embeddings()  # ...but no vector is read from a swapped shard
    problems = Store.open(store).verify(full=True)
    assert sorted(Path(p.path).name for p in problems) == ["emb-000000.npy", "emb-000001.npy"]


def test_a_store_written_before_checksums_still_opens_and_gets_them_on_its_next_write(store, photos,
                                                                                      tiny_encoder, capsys):
    m = manifest(store)
    for key in ("files", "next_shard"):
        m.pop(key)
    for s in m["shards"]:
        s.pop("dtype"), s.pop("dim")
    (store / "manifest.json").write_text(json.dumps(m))
    assert Store.open(store).count == 12 and len(Store.open(store).ids()) == 12
    rc, out, err = cli(capsys, "info", store, "--check")
    assert rc == 0 and "no checksums recorded yet" in out
    old = copy.deepcopy(m)
    rc, out, err = cli(capsys, "repair", store, "--json")
    assert rc == 0 and json.loads(out)["actions"] == ["recorded checksums of 8 files"]
    assert len(manifest(store)["files"]) == 8 and manifest(store)["shards"] == old["shards"]
    Image.new("RGB", (40, 40), (0, 0, 250)).save(photos / "more.png")
    run([photos], store, tiny_encoder, shard_rows=4)
    m = manifest(store)
    assert set(m["files"]) >= {s["embeddings"] for s in m["shards"]} and m["next_shard"] == 4
    rc, out, err = cli(capsys, "info", store, "--check")
    assert rc == 0 and "13 items, " in out


# ---- disk full, read-only ----------------------------------------------------------------------------
def test_disk_full_is_a_one_line_error_and_the_last_commit_stays(store, photos, tiny_clip, capsys,
                                                                 monkeypatch):
    import indexer.atomic

    before = manifest(store)
    baseline = rows_of(store)
    for k in range(3):
        Image.new("RGB", (40, 40), (80 * k, 0, 100)).save(photos / f"new{k}.png")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(indexer.atomic.os, "fsync", full)
    rc, out, err = cli(capsys, "index", photos, "--out", store, "--model", tiny_clip, "--workers", "0",
                       "--no-progress", "--shard-size", "2")
    monkeypatch.setattr(indexer.atomic.os, "fsync", real_fsync)
    assert rc == 2
    one_line_error(err, "No space left on device")
    assert manifest(store) == before and _same_rows(rows_of(store), baseline)
    assert not [p for p in store.rglob(".tmp-*")]
    rc, out, err = cli(capsys, "index", photos, "--out", store, "--model", tiny_clip, "--workers", "0",
                       "--no-progress", "--json")
    assert rc == 0 and json.loads(out)["count"] == 15


def test_a_read_only_store_is_read_and_refuses_writes_in_one_line(store, photos, tiny_clip):
    before = manifest(store)
    Image.new("RGB", (40, 40), (0, 90, 90)).save(photos / "new.png")
    kw = unprivileged()
    modes = {p: p.stat().st_mode for p in [store, *store.rglob("*")]}
    for p in sorted(modes, key=lambda p: -len(p.parts)):
        p.chmod(modes[p] & ~0o222)
    try:
        res = subprocess.run([*PIXDEX, "index", str(photos), "--out", str(store), "--model", tiny_clip,
                              "--workers", "0", "--no-progress"], capture_output=True, text=True, timeout=300,
                             check=False, **kw)
        info = subprocess.run([*PIXDEX, "info", str(store), "--check"], capture_output=True, text=True,
                              timeout=300, check=False, **kw)
        found = subprocess.run([*PIXDEX, "search", str(store), "id:2", "-k", "2", "--json", "--model",
                                tiny_clip],
                               capture_output=True, text=True, timeout=300, check=False, **kw)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert res.returncode == 2 and "unchanged" not in res.stdout
    one_line_error(res.stderr, "Permission denied")
    assert info.returncode == 0 and "healthy" in info.stdout, info.stderr
    assert found.returncode == 0 and json.loads(found.stdout)[0][0]["id"] == 2, found.stderr
    assert manifest(store) == before


# ---- the Python API ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["paths", "file_paths", "vectors", "item", "locate"])
@pytest.mark.parametrize("bad", [[10**30], [-(10**30)], ["a"], [1.5], [None]], ids=["huge", "-huge", "text",
                                                                                     "fraction", "none"])
def test_bad_ids_are_one_line_errors(store, call, bad):
    s = Store.open(store)
    fn = getattr(s, call)
    with pytest.raises(PixdexError) as exc:
        fn(bad[0]) if call == "item" else fn(bad)
    assert "\n" not in str(exc.value) and "id" in str(exc.value)
    if bad == [10**30]:
        assert str(10**30) in str(exc.value)


def test_thumbnails_of_a_store_that_cannot_be_written_are_served_uncached(store, tmp_path):
    from pixdex.server.files import thumbnail

    item = Store.open(store).item(2)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go: nothing can be created under it")
    data = thumbnail(item, blocked / "thumbs", 64, 10_000_000)
    assert data[:2] == b"\xff\xd8" and Image.open(io.BytesIO(data)).size[0] <= 64
