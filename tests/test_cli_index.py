"""`pixdex index` and `pixdex info` as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_shapes
from models import save_random_clip

PIXDEX = [sys.executable, "-m", "pixdex"]
SUMMARY_KEYS = {"indexed", "unchanged", "updated", "removed", "failed", "seconds"}


def pixdex(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*PIXDEX, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shapes_dir) -> Path:
    return copy_shapes(shapes_dir, tmp_path_factory.mktemp("cli") / "photos", 12)


@pytest.fixture(scope="module")
def built(tmp_path_factory, photos, tiny_clip) -> tuple[Path, dict]:
    store = tmp_path_factory.mktemp("cli-store") / "s.pixdex"
    res = pixdex("index", photos, "--out", store, "--model", tiny_clip, "--index", "hnsw", "--json",
                 "--no-progress")
    assert res.returncode == 0, res.stderr
    return store, json.loads(res.stdout)


def test_index_json_summary(built):
    _, summary = built
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["indexed"], summary["unchanged"], summary["failed"], summary["removed"]) == (12, 0, 0, 0)
    assert summary["seconds"] > 0 and summary["index"]["type"] == "hnsw"


def test_info_json(built, tiny_clip):
    store, _ = built
    res = pixdex("info", store, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["count"] == 12 and info["dim"] == 16 and info["errors"] == 0
    assert info["model"] == str(Path(tiny_clip).resolve())
    assert info["index"]["type"] == "hnsw"
    assert 0.95 <= info["index"]["recall_at_10"] <= 1 and "efSearch" in info["index"]["params"]


def test_rerun_prints_a_closing_summary_line(built, photos, tiny_clip):
    store, _ = built
    res = pixdex("index", photos, "--out", store, "--model", tiny_clip, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "indexed 0, unchanged 12, updated 0" in res.stdout and "store has 12 items" in res.stdout


def test_rerun_without_model_uses_the_stores_model(built, photos, shapes_dir, tmp_path, tiny_clip):
    """Re-indexing a store needs no --model: new photos are embedded with the model the store was built
    with (the default model would be refused, or is not even installed)."""
    store, _ = built
    work = tmp_path / "s.pixdex"
    subprocess.run(["cp", "-a", str(store), str(work)], check=True)
    more = tmp_path / "more"
    more.mkdir()
    for p in sorted(shapes_dir.glob("shape_*"))[12:15]:  # photos the store does not hold
        shutil.copy2(p, more / p.name)
    res = pixdex("index", photos, more, "--out", work, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "indexed 3, unchanged 12" in res.stdout
    info = json.loads(pixdex("info", work, "--json").stdout)
    assert info["count"] == 15 and info["model"] == str(Path(tiny_clip).resolve())


def test_other_model_is_refused_in_one_line(built, photos, tmp_path):
    store, _ = built
    other = save_random_clip(tmp_path / "other-clip", seed=1)
    res = pixdex("index", photos, "--out", store, "--model", other, "--no-progress")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "was built with model" in err[0] and "--model" in err[0]


def test_missing_default_model_explains_model_path(photos, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    from indexer.models import DEFAULT_MODEL

    if isinstance(try_to_load_from_cache(DEFAULT_MODEL, "config.json"), str):
        pytest.skip(f"{DEFAULT_MODEL} is cached on this machine")
    res = pixdex("index", photos, "--out", tmp_path / "s.pixdex", "--no-progress")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and DEFAULT_MODEL in err[0] and "--model PATH" in err[0]
    assert not (tmp_path / "s.pixdex").exists()


def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_clip):
    res = pixdex("index", tmp_path / "nowhere", "--out", tmp_path / "s", "--model", tiny_clip)
    assert (res.returncode == 2 and "does not exist" in res.stderr
            and len(res.stderr.strip().splitlines()) == 1)
    res = pixdex("info", tmp_path)
    assert res.returncode == 2 and "not a pixdex store" in res.stderr
