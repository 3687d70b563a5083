"""The index job: error table, incremental runs, determinism, and crash safety under SIGKILL."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_shapes
from PIL import Image

from indexer.job import index_collection
from indexer.store import Store

PIXDEX = [sys.executable, "-m", "pixdex"]


@pytest.fixture
def photos(tmp_path, shapes_dir) -> Path:
    """A writable copy of 10 shapes-world images."""
    return copy_shapes(shapes_dir, tmp_path / "photos", 10)


def run(sources, store, encoder, **kw):
    return index_collection([str(s) for s in sources], store, model=encoder, progress=False, workers=0, **kw)


def by_path(store_dir) -> dict[str, tuple[int, np.ndarray]]:
    store = Store.open(store_dir)
    ids, emb = store.embeddings()
    paths = store.paths(ids)
    return {p: (int(i), e) for p, i, e in zip(paths, ids, emb)}


# ---- the error table ----------------------------------------------------------------------------
def _drop_file_permission_override():
    """In the child: lose root's CAP_DAC_OVERRIDE/READ_SEARCH so file modes apply to it (runs before exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: dropped from the bounding set for exec
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def unprivileged() -> dict:
    """subprocess kwargs under which a chmod 000 file really cannot be read (as root too)."""
    if os.geteuid() != 0:
        return {}
    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_file_permission_override,
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: unreadable files cannot be made")
    return {"preexec_fn": _drop_file_permission_override}


def test_bad_files_go_to_the_error_table_and_the_job_finishes(tmp_path, photos, tiny_clip):
    good = sorted(p.name for p in photos.iterdir() if p.suffix in (".png", ".jpg"))
    jpeg = next(p.read_bytes() for p in sorted(photos.glob("shape_*.jpg")))
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (photos / "notes.jpg").write_text("this is not a picture\n")
    secret = photos / "secret.jpg"
    secret.write_bytes(jpeg)
    secret.chmod(0)
    store = tmp_path / "s.pixdex"
    try:
        res = subprocess.run([*PIXDEX, "index", str(photos), "--out", str(store), "--model", tiny_clip,
                              "--json", "--no-progress", "--workers", "0"],
                             capture_output=True, text=True, timeout=300, check=False, **unprivileged())
    finally:
        secret.chmod(0o644)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["indexed"], summary["failed"]) == (len(good), 4)
    errors = {Path(e["path"]).name: e["reason"] for e in Store.open(store).errors().to_pylist()}
    assert set(errors) == {"empty.jpg", "truncated.jpg", "notes.jpg", "secret.jpg"}
    assert "empty" in errors["empty.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "not an image" in errors["notes.jpg"]
    assert "permission denied" in errors["secret.jpg"]
    assert all("\n" not in r for r in errors.values())

    listed = subprocess.run([*PIXDEX, "info", str(store), "--errors"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert listed.returncode == 0
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 4 and {Path(line.split("\t")[0]).name for line in lines} == set(errors)
    assert Store.open(store).count == len(good)


def test_fixed_file_leaves_the_error_table_and_a_broken_one_leaves_the_index(tmp_path, photos, tiny_encoder):
    store = tmp_path / "s.pixdex"
    (photos / "later.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    first = run([photos], store, tiny_encoder)
    assert first.failed == 1 and Store.open(store).count == 10
    Image.new("RGB", (40, 40), (0, 90, 200)).save(photos / "later.png")
    victim = min(photos.glob("*.jpg"))
    victim.write_bytes(b"overwritten with garbage")
    second = run([photos], store, tiny_encoder)
    assert (second.indexed, second.failed) == (1, 1)
    s = Store.open(store)
    assert [Path(p).name for p in s.errors()["path"].to_pylist()] == [victim.name]
    assert str(victim) not in s.metadata()["path"].to_pylist()  # no stale embedding for a broken file
    victim.unlink()
    third = run([photos], store, tiny_encoder)
    assert third.failed == 0 and len(Store.open(store).errors()) == 0  # gone files leave the table too


# ---- incremental runs ---------------------------------------------------------------------------
def test_incremental_runs_encode_only_what_changed(tmp_path, photos, tiny_encoder):
    store = tmp_path / "s.pixdex"
    first = run([photos], store, tiny_encoder)
    assert (first.indexed, first.encoded, first.count) == (10, 10, 10)
    before = by_path(store)

    gen = Store.open(store).manifest["generation"]
    again = run([photos], store, tiny_encoder)
    assert (again.indexed, again.unchanged, again.updated, again.removed, again.encoded) == (0, 10, 0, 0, 0)
    assert Store.open(store).manifest["generation"] == gen  # nothing to write: the store is untouched

    files = sorted(photos.glob("shape_*"))
    Image.new("RGB", (50, 50), (250, 250, 0)).save(photos / "new.png")  # new
    changed = files[0]
    Image.new("RGB", (64, 64), (10, 10, 10)).save(changed,
                                                  format="PNG" if changed.suffix == ".png" else "JPEG")
    renamed_from, renamed_to = files[1], photos / "renamed" / ("moved" + files[1].suffix)
    renamed_to.parent.mkdir()
    renamed_from.rename(renamed_to)
    deleted = files[2]
    deleted.unlink()
    touched = files[3]
    os.utime(touched, (time.time() + 100, time.time() + 100))

    third = run([photos], store, tiny_encoder)
    assert (third.indexed, third.updated, third.reused, third.removed, third.failed) == (1, 1, 1, 2, 0)
    assert third.unchanged == 7 and third.encoded == 2  # the rename and the touch needed no model
    after = by_path(store)
    assert third.count == len(after) == 10
    assert str(deleted) not in after and str(renamed_from) not in after
    assert np.array_equal(after[str(renamed_to)][1], before[str(renamed_from)][1])
    assert after[str(touched)][0] == before[str(touched)][0]  # same content: same id
    assert Store.open(store).item(after[str(touched)][0])["mtime"] == touched.stat().st_mtime
    assert after[str(changed)][0] > max(i for i, _ in before.values())  # re-encoded under a new id
    assert np.allclose(after[str(changed)][1], tiny_encoder.encode_images([str(changed)])[0], atol=2e-3)
    index = Store.open(store).load_index()
    assert index.ntotal == 10

    fourth = run([photos], store, tiny_encoder)
    assert (fourth.unchanged, fourth.encoded) == (10, 0)  # the touched file's new mtime was recorded


@pytest.mark.parametrize("batch_size,shard_rows", [(8, 4096), (1, 4096), (1, 1)],
                         ids=["copy-in-the-same-batch", "copy-after-a-flush", "copy-after-a-commit"])
def test_copies_within_one_run_are_encoded_once(tmp_path, photos, tiny_encoder, batch_size, shard_rows):
    files = sorted(photos.glob("shape_*"))
    (photos / "sub").mkdir()
    copies = [photos / ("a_copy" + files[0].suffix), photos / "sub" / ("z_copy" + files[0].suffix)]
    for c in copies:
        shutil.copy(files[0], c)
    shutil.copy(files[1], photos / "sub" / ("b_copy" + files[1].suffix))
    store = tmp_path / "s.pixdex"
    summary = run([photos], store, tiny_encoder, batch_size=batch_size, shard_rows=shard_rows)
    assert (summary.count, summary.failed) == (13, 0)  # every path is stored...
    # ...once encoded
    assert summary.encoded == 10 and summary.indexed + summary.reused == 13 and summary.reused == 3
    rows = by_path(store)
    assert len({i for i, _ in rows.values()}) == 13
    for c in copies:
        assert np.array_equal(rows[str(c)][1], rows[str(files[0])][1])
    assert np.array_equal(rows[str(photos / "sub" / ("b_copy" + files[1].suffix))][1], rows[str(files[1])][1])
    want = tiny_encoder.encode_images([str(files[0])])[0]
    assert np.allclose(rows[str(copies[1])][1], want, atol=2e-3)  # the embedding of that content, not another
    again = run([photos], store, tiny_encoder, batch_size=batch_size, shard_rows=shard_rows)
    assert (again.unchanged, again.encoded, again.count) == (13, 0, 13)


def test_removal_is_scoped_to_the_sources_scanned(tmp_path, photos, tiny_encoder, shapes_dir):
    other = tmp_path / "other"
    other.mkdir()
    for p in sorted(shapes_dir.glob("shape_*"))[10:13]:
        shutil.copy2(p, other / p.name)
    store = tmp_path / "s.pixdex"
    run([photos, other], store, tiny_encoder)
    only = run([other], store, tiny_encoder)  # the photos folder was not scanned: its items stay
    assert (only.removed, only.count) == (0, 13)


def test_worker_processes_give_the_same_store_as_in_process_decoding(tmp_path, photos, tiny_encoder):
    import torch

    threads = torch.get_num_threads()
    run([photos], tmp_path / "a.pixdex", tiny_encoder)
    assert torch.get_num_threads() == threads  # in-process decoding leaves the model's threads alone
    index_collection([str(photos)], tmp_path / "b.pixdex", model=tiny_encoder, progress=False, workers=2,
                     batch_size=3)
    a, b = by_path(tmp_path / "a.pixdex"), by_path(tmp_path / "b.pixdex")
    assert [(p, i) for p, (i, _) in a.items()] == [(p, i) for p, (i, _) in b.items()]
    assert all(np.allclose(a[p][1], b[p][1], atol=2e-3) for p in a)


# ---- crash safety -------------------------------------------------------------------------------
def generation(store: Path) -> int:
    try:
        return json.loads((store / "manifest.json").read_text())["generation"]
    except (OSError, ValueError, KeyError):
        return -1


def kill_when(cmd: list[str], ready) -> int:
    """Start cmd, SIGKILL it as soon as ready() holds; returns its exit status (-9 when killed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return proc.wait()


def check_consistent(store: Path, baseline: dict[str, tuple[int, np.ndarray]]) -> int:
    """The store opens at a committed state: unique ids and paths, each row as in the uninterrupted run."""
    s = Store.open(store)
    ids = s.ids()
    paths = s.paths(ids)
    assert len(set(ids.tolist())) == len(ids) == s.count
    assert len(set(paths)) == len(paths)
    _, emb = s.embeddings()
    for p, i, e in zip(paths, ids, emb):
        assert baseline[p][0] == i
        assert np.allclose(baseline[p][1], e, atol=2e-3)
    return s.count


@pytest.mark.slow
def test_sigkill_at_any_point_then_rerun_gives_the_uninterrupted_store(tmp_path, tiny_clip, tiny_encoder):
    from pixdex.demo.world import write_collection

    photos = tmp_path / "photos"
    write_collection(photos, count=60, seed=3, image_size=64)
    opts = {"shard_rows": 4, "batch_size": 2}
    baseline_dir = tmp_path / "baseline.pixdex"
    index_collection([str(photos)], baseline_dir, model=tiny_encoder, progress=False, workers=0, **opts)
    baseline = by_path(baseline_dir)
    assert len(baseline) == 60

    store = tmp_path / "s.pixdex"
    cmd = [*PIXDEX, "index", str(photos), "--out", str(store), "--model", tiny_clip, "--shard-size", "4",
           "--batch-size", "2", "--workers", "0", "--no-progress"]
    counts = []
    # 1: as soon as the store exists (before or around the first commit)
    assert kill_when(cmd, lambda: generation(store) >= 0) == -signal.SIGKILL
    counts.append(check_consistent(store, baseline))
    # 2 and 3: a few shard commits into a resumed run
    for extra in (2, 4):
        target = generation(store) + extra
        assert kill_when(cmd, lambda target=target: generation(store) >= target) == -signal.SIGKILL
        counts.append(check_consistent(store, baseline))
    assert counts[-1] > counts[0] and counts[-1] < 60  # progress was kept across kills, the job was cut short
    final = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["indexed"] == 60 - counts[-1] and summary["unchanged"] == counts[-1]
    assert check_consistent(store, baseline) == 60
    result = by_path(store)
    assert {p: i for p, (i, _) in result.items()} == {p: i for p, (i, _) in baseline.items()}
    s = Store.open(store)
    assert s.index_is_current() and s.load_index().ntotal == 60
    leftovers = [p.name for p in store.rglob("*") if p.name.startswith(".tmp-")]
    assert not leftovers
