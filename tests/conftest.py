"""Shared fixtures: tiny random models, a generated shapes collection, and stores built from them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from models import save_random_clip


@pytest.fixture(scope="session", autouse=True)
def fast_text_cache(tmp_path_factory) -> Path:
    """A private cache for the fast text exports (indexer.text_onnx), so tests never read or fill ~/.cache."""
    path = tmp_path_factory.mktemp("pixdex-cache")
    os.environ["PIXDEX_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Directory of a random-weight CLIP checkpoint (real tokenizer and processor)."""
    return str(save_random_clip(tmp_path_factory.mktemp("models") / "tiny-clip"))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A 48-image shapes-world collection (seed 7) with labels.csv."""
    from pixdex.demo.world import write_collection

    out = tmp_path_factory.mktemp("shapes") / "collection"
    write_collection(out, count=48, seed=7)
    return out


@pytest.fixture(scope="session")
def shapes_clip() -> str:
    """The shipped shapes-clip model directory."""
    from pixdex.demo.assets import shapes_clip_path

    path = shapes_clip_path()
    if not (Path(path) / "config.json").is_file():
        pytest.fail("shapes-clip weights are missing from pixdex/demo/shapes-clip "
                    "(python -m pixdex.demo.train)")
    return path


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_clip, shapes_dir) -> Path:
    """A store of the shapes collection built with the tiny random CLIP (read-only: copy before writing)."""
    from indexer.job import index_collection

    out = tmp_path_factory.mktemp("stores") / "tiny.pixdex"
    index_collection([str(shapes_dir)], out, model=tiny_clip, progress=False, workers=0)
    return out


@pytest.fixture(scope="session")
def shapes_store(tmp_path_factory, shapes_clip) -> Path:
    """A 240-image shapes-world store (seed 11) built with shapes-clip (read-only: copy before writing)."""
    from indexer.job import index_collection
    from pixdex.demo.world import write_collection

    root = tmp_path_factory.mktemp("shapes-store")
    write_collection(root / "images", count=240, seed=11)
    out = root / "store.pixdex"
    index_collection([str(root / "images")], out, model=shapes_clip, progress=False, workers=0)
    return out


def shapes_clip_promise(metric: str, target: float, slack: float = 0.1) -> float:
    """A bar for a semantic test: the issue's `target`, or what the shipped model's training.json
    measured (minus `slack`) when that is lower. A better model raises the bar by itself."""
    import json

    from pixdex.demo.assets import shapes_clip_path

    measured = json.loads((Path(shapes_clip_path()) / "training.json").read_text())["quality"][metric]
    return min(target, measured - slack)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip):
    """The tiny random CLIP, loaded once (CPU)."""
    from indexer.encoder import get_encoder

    return get_encoder(tiny_clip, device="cpu")


def copy_shapes(shapes_dir: Path, out: Path, n: int) -> Path:
    """A writable folder with copies of the first n shapes-world images."""
    out.mkdir(parents=True)
    for p in sorted(shapes_dir.glob("shape_*"))[:n]:
        shutil.copy2(p, out / p.name)
    return out
