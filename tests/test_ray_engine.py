"""The Ray Data engine on a real local cluster: same store as the local engine, tar/URL sources, retries."""

from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest

from indexer.job import index_collection
from indexer.ray_engine import CRASH_ONCE_ENV
from indexer.store import Store

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    # two CPUs like CI's runner: actors take a fraction of a CPU so decode tasks always get one
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def collection(shapes_dir, tmp_path_factory):
    """The shapes collection plus a corrupt and a truncated file (they must land in the error table)."""
    root = tmp_path_factory.mktemp("raycol") / "images"
    shutil.copytree(shapes_dir, root)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    first = sorted(root.glob("*.png"))[0].read_bytes()
    (root / "truncated.png").write_bytes(first[: len(first) // 3])
    return root


def run(sources, store, engine, **kw):
    return index_collection(sources, store, model="shapes-clip", device="cpu", batch_size=16, progress=False,
                            log=lambda m: None, engine=engine, **kw)


def snapshot(path):
    s = Store.open(path)
    ids, emb = s.embeddings(np.float16)
    meta = s.metadata().to_pydict()
    return s, ids, emb, meta


def test_ray_engine_writes_the_same_store_as_the_local_engine(collection, tmp_path):
    local = run([str(collection)], tmp_path / "local", "local", shard_rows=16)
    dist = run([str(collection)], tmp_path / "ray", "ray", shard_rows=16)
    assert (dist.indexed, dist.failed, dist.count) == (local.indexed, local.failed, local.count)
    assert dist.failed == 2 and dist.encoded == local.encoded == local.count
    a, ids_a, emb_a, meta_a = snapshot(tmp_path / "local")
    b, ids_b, emb_b, meta_b = snapshot(tmp_path / "ray")
    assert meta_a["path"] == meta_b["path"] and meta_a["sha256"] == meta_b["sha256"]
    assert ids_a.tolist() == ids_b.tolist()
    # failed images shift the local engine's batches (it batches only decodable images), and CPU
    # matmuls are batch-dependent in the last bits: the same up to one float16 rounding step
    ulps = np.abs(emb_a.view(np.int16).astype(np.int32) - emb_b.view(np.int16).astype(np.int32))
    assert ulps.max() <= 1 and (ulps == 0).mean() > 0.99
    assert sorted(a.errors().to_pydict()["path"]) == sorted(b.errors().to_pydict()["path"])
    assert len(b.manifest["shards"]) == len(a.manifest["shards"])


def test_ray_engine_embeddings_are_byte_for_byte_the_local_engines(shapes_dir, tmp_path):
    run([str(shapes_dir)], tmp_path / "local", "local")
    run([str(shapes_dir)], tmp_path / "ray", "ray")
    _, ids_a, emb_a, meta_a = snapshot(tmp_path / "local")
    _, ids_b, emb_b, meta_b = snapshot(tmp_path / "ray")
    assert meta_a["path"] == meta_b["path"] and ids_a.tolist() == ids_b.tolist()
    assert emb_a.tobytes() == emb_b.tobytes()  # same batches, same thread count: the same bytes


def test_ray_engine_resumes_from_what_is_committed(collection, tmp_path):
    files = sorted(p for p in collection.glob("*") if p.suffix in (".png", ".jpg"))
    files = [p for p in files if p.name not in ("corrupt.jpg", "truncated.png")]
    half = tmp_path / "half.txt"
    half.write_text("\n".join(str(p) for p in files[:20]))
    store = tmp_path / "s"
    first = run([str(half)], store, "ray", shard_rows=8)
    again = run([str(collection)], store, "ray", shard_rows=8)
    assert first.indexed == 20 and again.unchanged == 20
    assert again.encoded == again.indexed == len(files) - 20 and again.failed == 2
    paths = Store.open(store).metadata()["path"].to_pylist()
    assert len(paths) == len(set(paths)) == len(files)  # nothing lost, nothing duplicated


def test_ray_engine_reads_webdataset_shards_by_url(collection, tmp_path):
    images = sorted(collection.glob("*.png"))[:12]
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for k, p in enumerate(images):
            tar.add(p, arcname=f"sample{k:03d}.png")
            caption = f"caption {k}".encode()
            info = tarfile.TarInfo(f"sample{k:03d}.txt")
            info.size = len(caption)
            tar.addfile(info, io.BytesIO(caption))
    summary = run([f"file://{tar_path}"], f"file://{tmp_path / 'wds'}", "ray")
    assert summary.indexed == 12 and summary.failed == 0
    s, ids, emb, meta = snapshot(tmp_path / "wds")
    assert meta["path"][0] == f"{tar_path}#sample000.png" and meta["caption"][3] == "caption 3"
    # same bytes as the loose files: same embeddings as indexing them from the folder
    listed = tmp_path / "files.txt"
    listed.write_text("\n".join(str(p) for p in images))
    run([str(listed)], tmp_path / "loose", "local")
    assert emb.tobytes() == snapshot(tmp_path / "loose")[2].tobytes()


def test_a_dying_embedding_worker_is_retried(collection, tmp_path, monkeypatch):
    marker = tmp_path / "crashed-once"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    summary = run([str(collection)], tmp_path / "s", "ray")
    assert marker.exists()  # an actor really died mid-batch
    assert summary.count == summary.indexed == len(Store.open(tmp_path / "s").metadata())
    assert summary.failed == 2


def test_sharded_index_parts_run_as_ray_tasks(collection, tmp_path):
    summary = run([str(collection)], tmp_path / "s", "ray", index="sharded")
    assert summary.index["type"] == "ivfpq-ondisk" and summary.index["ntotal"] == summary.count
    from search import Searcher

    s = Searcher(tmp_path / "s")
    ids, emb = s.store.embeddings()
    assert s.search_embedding(emb[5], k=1)[0].id == ids[5]


def test_cli_ray_engine_and_sharded_search_keep_stdout_clean_json(collection, tmp_path):
    import json
    import subprocess
    import sys

    store = tmp_path / "cli.pixdex"
    cmd = [sys.executable, "-m", "pixdex", "index", str(collection), "--out", str(store), "--model",
           "shapes-clip", "--engine", "ray", "--workers", "1", "--index", "sharded", "--json",
           "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)  # Ray's and FAISS's chatter stays off stdout
    assert summary["indexed"] == summary["count"] and summary["failed"] == 2
    assert summary["index"]["type"] == "ivfpq-ondisk"
    res = subprocess.run([sys.executable, "-m", "pixdex", "search", str(store), "a red circle", "-k", "5",
                          "--json"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    hits = json.loads(res.stdout)
    assert len(hits) >= 1


def test_ray_engine_reads_datasets_sources_like_the_local_engine(collection, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = sorted(collection.glob("shape_*.png"))[:10]
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": p.name} for p in files], "n": list(range(len(files)))},
        features=datasets.Features({"image": datasets.Image(), "n": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    sources = [str(tmp_path / "saved"), str(tmp_path / "rows.parquet")]
    dist = run(sources, tmp_path / "ray", "ray")  # the workers open the datasets themselves
    run(sources, tmp_path / "local", "local")
    assert dist.indexed == 2 * len(files) and dist.failed == 0
    _, _, emb_r, meta_r = snapshot(tmp_path / "ray")
    _, _, emb_l, meta_l = snapshot(tmp_path / "local")
    assert meta_r["path"] == meta_l["path"] and meta_r["n"] == meta_l["n"] == 2 * list(range(len(files)))
    assert emb_r.tobytes() == emb_l.tobytes()
