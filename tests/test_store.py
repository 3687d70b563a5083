"""The store format: manifest facts, memory-mappable float16 shards, parquet metadata, plain FAISS,
atomic writes."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.atomic import save_json, write_atomic
from indexer.encoder import ModelInfo
from indexer.errors import ModelMismatchError, PixdexError
from indexer.store import Store, StoreWriter

INFO = ModelInfo("test-model", "clip", 8, "f00dfeed", "clip")


def unit_rows(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(paths) -> list[dict]:
    return [{"path": p, "bytes": 10, "mtime": 1.0, "width": 4, "height": 3, "sha256": p} for p in paths]


def test_manifest_records_the_facts_readers_need(tiny_store, shapes_dir):
    m = json.loads((tiny_store / "manifest.json").read_text())
    n = len([p for p in shapes_dir.iterdir() if p.suffix in (".png", ".jpg")])
    assert (m["format"], m["version"], m["dtype"], m["metric"]) == ("pixdex-store", 1, "float16",
                                                                    "inner_product")
    assert m["model"]["name"] and len(m["model"]["fingerprint"]) == 16 and m["model"]["dim"] == m["dim"]
    assert m["counts"] == {"rows": n, "items": n, "deleted": 0, "errors": 0}
    assert m["index"]["type"] == "flat" and m["index"]["file"].endswith(".faiss")
    assert m["index"]["recall_at_10"] == 1.0
    created, updated = datetime.fromisoformat(m["created"]), datetime.fromisoformat(m["updated"])
    assert created <= updated


def test_embedding_shards_are_memory_mappable_float16(tiny_store):
    store = Store.open(tiny_store)
    shard = store.manifest["shards"][0]
    emb = np.load(tiny_store / shard["embeddings"], mmap_mode="r")
    assert isinstance(emb, np.memmap) and emb.dtype == np.float16 and emb.shape == (shard["rows"], store.dim)
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
    _, full = store.embeddings()
    assert np.array_equal(full[: shard["rows"]], emb.astype(np.float32))


def test_metadata_is_plain_parquet_for_datasets_and_numpy(tiny_store):
    import datasets

    store = Store.open(tiny_store)
    files = [str(tiny_store / s["metadata"]) for s in store.manifest["shards"]]
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(tiny_store.parent / f"hf-cache-{tiny_store.name}"))
    assert {"id", "path", "bytes", "mtime", "width", "height", "sha256"} <= set(ds.column_names)
    assert ds["path"] == store.metadata()["path"].to_pylist()
    table = pq.read_table(files[0])
    ids = table["id"].to_numpy()
    assert np.array_equal(ids, np.arange(len(ids)))  # row k of meta-N is row k of emb-N
    emb = np.load(tiny_store / store.manifest["shards"][0]["embeddings"])
    assert np.array_equal(store.vectors(ids[:5]), emb[:5].astype(np.float32))
    shutil.rmtree(tiny_store.parent / f"hf-cache-{tiny_store.name}", ignore_errors=True)


def test_index_is_readable_by_plain_faiss(tiny_store):
    import faiss

    store = Store.open(tiny_store)
    index = faiss.read_index(str(tiny_store / store.index_info["file"]))
    ids, emb = store.embeddings()
    assert index.ntotal == len(ids)
    _, found = index.search(emb[:3], 1)
    assert found[:, 0].tolist() == ids[:3].tolist()  # FAISS ids are store ids


def test_other_model_is_refused(tmp_path):
    with StoreWriter(tmp_path / "s", INFO) as w:
        w.append(rows(["a"]), unit_rows(1))
    other = ModelInfo("other-model", "clip", 8, "0123456789abcdef", "clip")
    with pytest.raises(ModelMismatchError, match="test-model"):
        StoreWriter(tmp_path / "s", other)
    with pytest.raises(ModelMismatchError):
        Store.open(tmp_path / "s").check_model(other)


def test_an_empty_store_may_start_over_with_another_model(tmp_path):
    with StoreWriter(tmp_path / "s", INFO):
        pass  # e.g. a first run killed before anything was embedded
    other = ModelInfo("other-model", "clip", 4, "0123456789abcdef", "clip")
    with StoreWriter(tmp_path / "s", other) as w:
        w.append(rows(["a"]), unit_rows(1, dim=4))
    assert Store.open(tmp_path / "s").model["name"] == "other-model"


def test_refuses_a_folder_that_is_not_a_store_and_leaves_it_untouched(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(PixdexError, match="not a pixdex store"):
        StoreWriter(tmp_path / "photos", INFO)
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]
    with pytest.raises(PixdexError, match="does not exist"):
        Store.open(tmp_path / "nothing")


def test_second_writer_is_refused_while_one_holds_the_store(tmp_path):
    with StoreWriter(tmp_path / "s", INFO), pytest.raises(PixdexError, match="another process"):
        StoreWriter(tmp_path / "s", INFO)


def test_ids_deletes_errors_and_tags_round_trip(tmp_path):
    path = tmp_path / "s"
    vecs = unit_rows(5)
    with StoreWriter(path, INFO, shard_rows=2) as w:
        assert w.append(rows(["a", "b", "c"]), vecs[:3]) == [0, 1, 2]
        assert w.append(rows(["d", "e"]), vecs[3:]) == [3, 4]
        w.delete([1])
        w.record_error("/x/broken.jpg", "truncated\nimage", 5, 2.0)
    store = Store.open(path)
    assert store.count == 4 and store.ids().tolist() == [0, 2, 3, 4]
    assert store.paths([4, 0]) == ["e", "a"]
    assert np.allclose(store.vectors([3]), vecs[3], atol=1e-3)
    with pytest.raises(PixdexError, match="unknown id 1"):
        store.vectors([1])
    assert store.errors().to_pylist() == [{"path": "/x/broken.jpg", "reason": "truncated image", "bytes": 5,
                                           "mtime": 2.0}]
    with StoreWriter(path) as w:
        w.write_tags("colour", pa.table({"id": [0, 4], "colour": ["red", "blue"]}))
    meta = Store.open(path).metadata().to_pydict()
    assert meta["colour"] == ["red", None, None, "blue"]


def test_a_killed_writer_leaves_the_last_commit_and_its_debris_is_swept(tmp_path):
    path = tmp_path / "s"
    with StoreWriter(path, INFO) as w:
        w.append(rows(["a", "b"]), unit_rows(2))
    before = (path / "manifest.json").read_text()
    # what a writer killed mid-commit leaves: a shard no manifest names and a half-written temp file
    np.save(path / "shards" / "emb-000001.npy", unit_rows(3).astype(np.float16))
    (path / ".tmp-999-manifest.json").write_text('{"half": ')
    (path / "notes.txt").write_text("a user's file: not ours to delete")
    assert Store.open(path).count == 2 and (path / "manifest.json").read_text() == before
    with StoreWriter(path, INFO) as w:
        assert w.append(rows(["c"]), unit_rows(1)) == [2]
    assert not (path / ".tmp-999-manifest.json").exists()
    assert (path / "notes.txt").exists()
    store = Store.open(path)
    assert store.count == 3 and store.manifest["shards"][1]["rows"] == 1
    assert np.load(path / "shards" / "emb-000001.npy").shape == (1, 8)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "manifest.json"
    save_json(target, {"generation": 1})

    def crash(p):
        p.write_text('{"generation": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, crash)
    assert json.loads(target.read_text()) == {"generation": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_readers_never_see_a_half_written_store(tmp_path):
    path = tmp_path / "s"
    with StoreWriter(path, INFO):
        pass
    stop, seen, problems = threading.Event(), [], []

    def read():
        while not stop.is_set():
            try:
                s = Store.open(path)
                seen.append(s.count)
                assert len(s.ids()) == s.count
            except Exception as exc:  # any failure is the finding
                problems.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with StoreWriter(path, INFO, shard_rows=1) as w:
            for k in range(60):
                w.append(rows([f"p{k}"]), unit_rows(1, seed=k))
    finally:
        stop.set()
        reader.join()
    assert not problems
    assert seen == sorted(seen) and Store.open(path).count == 60


def test_old_snapshot_stays_readable_until_the_next_writer_session_ends(tmp_path):
    path = tmp_path / "s"
    with StoreWriter(path, INFO) as w:
        w.append(rows(["a", "b"]), unit_rows(2))
        w.record_error("/bad.jpg", "not an image", 3, 1.0)
    old = Store.open(path)
    with StoreWriter(path, INFO) as w:
        w.forget_errors(["/bad.jpg"])
        w.record_error("/worse.jpg", "truncated", 3, 1.0)
    assert old.errors()["path"].to_pylist() == ["/bad.jpg"]  # its file was retained
    assert Store.open(path).errors()["path"].to_pylist() == ["/worse.jpg"]


def test_items_are_found_by_the_sha256_of_their_bytes(tmp_path):
    """ids_with_content: the lowest live id holding those bytes, across shards; removed items, unknown and
    malformed digests are not found; digests sharing their first 8 bytes are told apart."""
    import hashlib

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    twin = sha("a")[:16] + sha("b")[16:]  # same 8-byte prefix as sha("a"), other bytes
    digests = [sha("a"), sha("b"), sha("a"), twin, sha("c"), sha("d"), "not-a-digest"]
    with StoreWriter(tmp_path / "s", INFO, shard_rows=3) as w:
        w.append([{**r, "sha256": d} for r, d in zip(rows([f"/p/{i}.jpg" for i in range(7)]), digests)],
                 unit_rows(7))
        w.delete([4])  # sha("c") removed
    store = Store.open(tmp_path / "s")
    assert not store.content_table_loaded
    found = store.ids_with_content([sha("a"), sha("b"), twin, sha("c"), sha("d"), sha("zzz"), "not-a-digest"])
    assert found == {sha("a"): 0, sha("b"): 1, twin: 3, sha("d"): 5}
    assert store.content_table_loaded  # later lookups use the table kept with this snapshot
    assert store.ids_with_content([twin, sha("a")]) == {twin: 3, sha("a"): 0}
