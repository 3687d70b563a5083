"""Sources: folders (recursion, sniffing, hidden files, symlinks, loops), path lists, several sources,
datasets."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.errors import PixdexError
from indexer.sources import iter_source, iter_sources


def png(path: Path, color=(200, 20, 20), size=(24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "PNG")
    return path


def keys(spec, **kw) -> list[str]:
    return [i.key for i in iter_source(str(spec), **kw)]


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    png(root / "a.png")
    png(root / "sub" / "deeper" / "b.png")
    png(root / "sub" / "c.dat")  # a PNG without an image extension: found by content
    (root / "sub" / "notes.dat").write_text("not an image")
    (root / "readme.txt").write_text("hello")
    png(root / ".hidden.png")
    png(root / ".cache" / "d.png")
    return root


def test_folder_is_walked_recursively_by_content_in_sorted_order(tree):
    found = keys(tree)
    rel = [os.path.relpath(k, tree) for k in found]
    assert rel == ["a.png", "sub/c.dat", "sub/deeper/b.png"]
    assert all(os.path.isabs(k) for k in found)


def test_hidden_files_and_folders_only_when_asked(tree):
    rel = {os.path.relpath(k, tree) for k in keys(tree, include_hidden=True)}
    assert {".hidden.png", ".cache/d.png"} <= rel


def test_symlinked_folder_is_followed_and_nothing_is_listed_twice(tmp_path, tree):
    outside = tmp_path / "elsewhere"
    png(outside / "e.png")
    (tree / "linked").symlink_to(outside, target_is_directory=True)
    (tree / "again").symlink_to(tree / "sub", target_is_directory=True)  # already walked
    (tree / "alias.png").symlink_to(tree / "a.png")  # same file twice
    warnings = []
    rel = [os.path.relpath(k, tree) for k in keys(tree, warn=warnings.append)]
    assert "linked/e.png" in rel
    assert sum(r.endswith("b.png") for r in rel) == 1
    assert sum(r in ("a.png", "alias.png") for r in rel) == 1
    assert any("already visited" in w for w in warnings)


def test_directory_loop_is_detected_without_hanging(tree):
    (tree / "sub" / "deeper" / "loop").symlink_to(tree, target_is_directory=True)
    result = []
    t = threading.Thread(target=lambda: result.extend(iter_source(str(tree))), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "walking a folder with a symlink loop did not finish"
    good = [i.key for i in result if i.error is None]
    assert len(good) == len(set(good)) == 3
    bad = [i for i in result if i.error is not None]
    assert [i.key for i in bad] == [str(tree / "sub" / "deeper" / "loop")]
    assert bad[0].error.startswith("directory loop: links back to its own ancestor")


def hostile_tree(root: Path) -> dict[str, str]:
    """A folder holding one good image and every kind of entry that cannot be read: name -> reason."""
    png(root / "good.png")
    (root / "dangling.png").symlink_to(root / "gone.png")
    (root / "dangling-folder").symlink_to(root / "no-such-folder", target_is_directory=True)
    (root / "self.png").symlink_to(root / "self.png")
    (root / "ping.png").symlink_to(root / "pong.png")
    (root / "pong.png").symlink_to(root / "ping.png")
    os.mkfifo(root / "pipe.png")
    os.mkfifo(root / "pipe-no-extension")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    return {"dangling.png": "dangling symbolic link (to", "dangling-folder": "dangling symbolic link (to",
            "self.png": "symbolic link loop", "ping.png": "symbolic link loop",
            "pong.png": "symbolic link loop",
            "pipe.png": "a FIFO (named pipe), not a regular file",
            "pipe-no-extension": "a FIFO (named pipe), not a regular file",
            "sub/up": "directory loop: links back to its own ancestor"}


def test_links_loops_and_fifos_become_error_items_not_silence(tmp_path):
    root = tmp_path / "photos"
    expected = hostile_tree(root)
    result: list = []
    t = threading.Thread(target=lambda: result.extend(iter_source(str(root))), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "walking a folder with FIFOs and link loops did not finish"
    errors = {os.path.relpath(i.key, root): i.error for i in result if i.error is not None}
    assert set(errors) == set(expected)
    for name, reason in expected.items():
        assert errors[name].startswith(reason), (name, errors[name])
        assert "\n" not in errors[name]
    assert [os.path.relpath(i.key, root) for i in result if i.error is None] == ["good.png"]


def test_index_job_records_each_hostile_entry_in_the_error_table(tmp_path, tiny_encoder):
    from indexer.job import index_collection
    from indexer.store import Store

    root = tmp_path / "photos"
    expected = hostile_tree(root)
    listing = tmp_path / "list.txt"
    listing.write_text("photos/self.png\nphotos/pipe-no-extension\n/dev/zero\nphotos/good.png\n")
    store = tmp_path / "store.pixdex"
    for _ in range(2):  # a rerun records the same errors again, nothing more, nothing lost
        summary = index_collection([str(root), str(listing)], store, model=tiny_encoder, progress=False,
                                   workers=0, log=lambda m: None)
        st = Store.open(store)
        assert st.count == 1
        errors = {e["path"]: e["reason"] for e in st.errors().to_pylist()}
        assert {os.path.relpath(p, root) for p in errors if p.startswith(str(root))} == set(expected)
        assert errors["/dev/zero"] == "a character device, not a regular file"
        assert len(errors) == len(expected) + 1
    assert summary.failed == len(expected) + 1
    (root / "self.png").unlink()  # fixed: its error row goes
    index_collection([str(root), str(listing)], store, model=tiny_encoder, progress=False, workers=0,
                     log=lambda m: None)
    # still listed
    assert str(root / "self.png") in {e["path"] for e in Store.open(store).errors().to_pylist()}
    index_collection([str(root)], store, model=tiny_encoder, progress=False, workers=0, log=lambda m: None)
    assert str(root / "self.png") not in {e["path"] for e in Store.open(store).errors().to_pylist()}


def test_a_device_is_not_a_source(tmp_path):
    with pytest.raises(PixdexError, match="is a character device"):
        list(iter_source("/dev/zero"))


def test_path_list_file(tmp_path, tree):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my picks\nphotos/a.png\n\n{tree / 'sub' / 'deeper' / 'b.png'}\n"
                       "photos/missing.jpg\n")
    items = list(iter_source(str(listing)))
    assert [i.key for i in items] == [str(tree / "a.png"), str(tree / "sub/deeper/b.png"),
                                      str(tree / "missing.jpg")]
    assert items[-1].size == -1  # listed but absent: the job records why


def test_several_sources_in_order_without_duplicates(tmp_path, tree):
    other = tmp_path / "other"
    png(other / "z.png")
    found = [i.key for i in iter_sources([str(other), str(tree), str(tree / "sub")])]
    assert found[0] == str(other / "z.png")
    assert len(found) == len(set(found)) == 4


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(PixdexError, match="does not exist"):
        list(iter_source(str(tmp_path / "nope")))


# ---- datasets -----------------------------------------------------------------------------------
def png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buf, "PNG")
    return buf.getvalue()


COLORS = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path / "hf-cache"


def make_dataset():
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["red", "green", "blue"]),
                                  "id": datasets.Value("int64")})
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(c), "path": f"img{i}.png"} for i, c in enumerate(COLORS)],
         "caption": ["a red square", "a green square", "a blue square"], "label": [0, 1, 2], "id": [7, 8, 9]},
        features=features)


def test_save_to_disk_dataset_rows_with_metadata(tmp_path, hf_cache):
    make_dataset().save_to_disk(tmp_path / "saved")
    items = list(iter_source(str(tmp_path / "saved")))
    assert [i.key for i in items] == [f"{tmp_path / 'saved'}#train/{r}" for r in range(3)]
    assert items[0].extra == {"caption": "a red square", "label": "red", "dataset_id": 7,
                              "source_file": "img0.png"}
    assert len({i.sha256 for i in items}) == 3 and items[0].data is None  # bytes are read later, in batches


def test_parquet_and_imagefolder_sources(tmp_path, hf_cache):
    make_dataset().to_parquet(str(tmp_path / "d.parquet"))
    items = list(iter_source(str(tmp_path / "d.parquet")))
    assert [i.extra["caption"] for i in items] == ["a red square", "a green square", "a blue square"]

    folder = tmp_path / "imgs"
    for i, c in enumerate(COLORS):
        png(folder / f"p{i}.png", c)
    (folder / "metadata.csv").write_text("file_name,caption\n"
                                         + "".join(f"p{i}.png,caption {i}\n" for i in range(3)))
    items = list(iter_source(f"imagefolder:{folder}"))
    assert sorted(i.extra["caption"] for i in items) == ["caption 0", "caption 1", "caption 2"]
    assert all(i.key.startswith(f"imagefolder:{folder}#train/") for i in items)


def test_dataset_columns_become_store_metadata(tmp_path, hf_cache, tiny_encoder):
    """save_to_disk, parquet and imagefolder sources in one run: rows embedded, other columns kept
    as metadata."""
    from indexer.job import index_collection
    from indexer.store import Store

    make_dataset().save_to_disk(tmp_path / "saved")
    make_dataset().to_parquet(str(tmp_path / "d.parquet"))
    folder = tmp_path / "imgs"
    for i, c in enumerate(COLORS):
        png(folder / f"p{i}.png", c)
    (folder / "metadata.csv").write_text("file_name,caption\n"
                                         + "".join(f"p{i}.png,folder {i}\n" for i in range(3)))
    sources = [str(tmp_path / "saved"), str(tmp_path / "d.parquet"), f"imagefolder:{folder}"]
    summary = index_collection(sources, tmp_path / "s.pixdex", model=tiny_encoder, progress=False, workers=0)
    assert (summary.indexed + summary.reused, summary.failed, summary.count) == (9, 0, 9)
    store = Store.open(tmp_path / "s.pixdex")
    meta = store.metadata().to_pydict()
    assert meta["caption"][:6] == ["a red square", "a green square", "a blue square"] * 2
    assert sorted(meta["caption"][6:]) == ["folder 0", "folder 1", "folder 2"]
    assert meta["label"][:6] == ["red", "green", "blue"] * 2 and meta["dataset_id"][:6] == [7, 8, 9] * 2
    direct = tiny_encoder.encode_images([png_bytes(c) for c in COLORS])
    _, stored = store.embeddings()
    assert np.allclose(stored[:3], direct, atol=2e-3) and np.allclose(stored[3:6], direct, atol=2e-3)
    again = index_collection(sources, tmp_path / "s.pixdex", model=tiny_encoder, progress=False, workers=0)
    assert (again.indexed, again.unchanged, again.encoded) == (0, 9, 0)


# ---- fsspec URLs and WebDataset shards ----------------------------------------------------------
def test_fsspec_url_sources_index_like_local_files(tmp_path, tiny_encoder):
    import fsspec

    from indexer.job import index_collection
    from indexer.store import Store

    fs = fsspec.filesystem("memory")
    local = tmp_path / "local"
    for k, color in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        data = png(local / f"{k}.png", color).read_bytes()
        fs.pipe(f"/bucket/photos/{k}.png", data)
    fs.pipe("/bucket/photos/notes.txt", b"not an image")
    fs.pipe("/bucket/photos/broken.png", b"\x89PNG\r\n\x1a\n truncated")
    assert ([k.rsplit("/", 1)[1] for k in keys("memory://bucket/photos")]
            == ["0.png", "1.png", "2.png", "broken.png"])
    kw = {"model": tiny_encoder, "progress": False, "log": lambda m: None, "workers": 0}
    remote = index_collection(["memory://bucket/photos"], tmp_path / "remote", **kw)
    index_collection([str(local)], tmp_path / "plain", **kw)
    assert (remote.indexed, remote.failed) == (3, 1)
    a, b = Store.open(tmp_path / "remote"), Store.open(tmp_path / "plain")
    assert a.metadata()["path"].to_pylist()[0] == "memory:///bucket/photos/0.png"
    assert a.embeddings(np.float16)[1].tobytes() == b.embeddings(np.float16)[1].tobytes()
    assert "broken.png" in a.errors()["path"].to_pylist()[0]
    fs.rm("/bucket/photos/1.png")
    again = index_collection(["memory://bucket/photos"], tmp_path / "remote", **kw)
    assert (again.removed, again.unchanged, again.count) == (1, 2, 2)  # removals seen through the URL too


def test_webdataset_tar_members_become_items_with_their_sidecars(tmp_path):
    import tarfile

    img = png(tmp_path / "x.png").read_bytes()
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in [("a/0001.jpg.png", img), ("a/0001.txt", b"a red square"),
                           ("a/0001.json", b'{"id": 5, "w": 2}'), ("0002.png", img), ("0002.cls", b"7")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    items = list(iter_source(str(tar_path)))
    assert [i.key for i in items] == [f"{tar_path}#a/0001.jpg.png", f"{tar_path}#0002.png"]
    assert items[0].extra["caption"] == "a red square" and items[0].extra["dataset_id"] == 5
    assert items[1].extra["label"] == "7"
    from indexer.sources import item_bytes

    assert item_bytes(items[1]) == img  # read by offset, not by unpacking
    with pytest.raises(PixdexError, match="not a readable tar"):
        bad = tmp_path / "bad.tar"
        bad.write_bytes(b"garbage" * 100)
        list(iter_source(str(bad)))


def test_a_store_on_object_storage_is_published_manifest_last_and_readable(tmp_path, tiny_encoder,
                                                                           monkeypatch):
    import fsspec

    from indexer.job import index_collection
    from indexer.store import Store
    from search import Searcher

    monkeypatch.setenv("PIXDEX_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    photos = tmp_path / "photos"
    for k, color in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20)]):
        png(photos / f"{k}.png", color)
    kw = {"model": tiny_encoder, "progress": False, "log": lambda m: None, "workers": 0}
    url = "memory://bucket/stores/photos.pixdex"
    first = index_collection([str(photos)], url, **kw)
    assert first.indexed == 4 and fs.exists("/bucket/stores/photos.pixdex/manifest.json")
    names = {p.rsplit("photos.pixdex/", 1)[1] for p in fs.find("/bucket/stores/photos.pixdex")}
    manifest = json.loads(fs.cat_file("/bucket/stores/photos.pixdex/manifest.json"))
    assert {s["embeddings"] for s in manifest["shards"]} <= names and manifest["index"]["file"] in names

    # a reader elsewhere (empty cache) pulls the published store and searches it
    monkeypatch.setenv("PIXDEX_CACHE", str(tmp_path / "other-cache"))
    assert Store.open(url).count == 4
    ids, emb = Store.open(url).embeddings()
    assert Searcher(url).search_embedding(emb[2], k=1)[0].id == ids[2]

    (photos / "0.png").unlink()
    again = index_collection([str(photos)], url, **kw)  # incremental through the remote store
    assert (again.removed, again.unchanged, again.count) == (1, 3, 3)
    manifest = json.loads(fs.cat_file("/bucket/stores/photos.pixdex/manifest.json"))
    live = {p.rsplit("photos.pixdex/", 1)[1] for p in fs.find("/bucket/stores/photos.pixdex")}
    from indexer.store_format import referenced_files

    assert live == {*referenced_files(manifest), "manifest.json"}  # replaced files were swept from the bucket
