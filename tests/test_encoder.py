"""The encoder: CLIP, SigLIP and SigLIP2 checkpoints index and encode like their own processor + model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from models import save_random_siglip, save_random_siglip2
from PIL import Image

from indexer.encoder import Encoder
from indexer.errors import ModelMismatchError, PixdexError
from indexer.job import index_collection
from indexer.models import DEFAULT_MODEL
from indexer.store import Store

FAMILIES = ["clip", "siglip", "siglip2"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_clip) -> dict[str, str]:
    root = tmp_path_factory.mktemp("family-models")
    return {"clip": tiny_clip, "siglip": str(save_random_siglip(root / "siglip")),
            "siglip2": str(save_random_siglip2(root / "siglip2"))}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A few varied files: PNG, small JPEG, a large JPEG (draft-decoded), an EXIF-rotated JPEG,
    a wide image."""
    out = tmp_path_factory.mktemp("enc-images")
    rng = np.random.default_rng(5)

    def photo(w, h):
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        arr = np.stack([128 + 100 * np.sin(7 * x), 128 + 90 * np.cos(5 * y),
                        128 + 60 * np.sin(3 * (x + y))], -1)
        arr[h // 3 : h // 2, w // 4 : w // 2] = rng.integers(0, 255, 3)
        return Image.fromarray(np.clip(arr + rng.normal(0, 5, arr.shape), 0, 255).astype(np.uint8))

    photo(64, 48).save(out / "a.png")
    photo(80, 80).save(out / "b.jpg", quality=90)
    photo(1400, 1000).save(out / "c_large.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 8
    photo(120, 60).save(out / "d_rotated.jpg", quality=90, exif=exif)
    photo(300, 60).save(out / "e_wide.png")
    return out


def reference_embeddings(model_dir: str, paths: list[Path]) -> np.ndarray:
    """The transformers way: load_image, processor(images=...), model.get_image_features, normalise."""
    from transformers import AutoModelForZeroShotImageClassification, AutoProcessor
    from transformers.image_utils import load_image

    model = AutoModelForZeroShotImageClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = []
    with torch.inference_mode():
        for p in paths:
            out = model.get_image_features(**processor(images=[load_image(str(p))], return_tensors="pt"))
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            rows.append(torch.nn.functional.normalize(emb, dim=-1)[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_indexes_like_its_own_processor_and_model(family, model_dirs, images, tmp_path):
    enc = Encoder(model_dirs[family], device="cpu")
    assert enc.family == ("clip" if family == "clip" else "siglip")
    assert enc.info.model_type == family
    check_indexes_like_reference(enc, model_dirs[family], images, tmp_path)


def test_shapes_clip_indexes_like_its_own_processor_and_model(shapes_clip, images, tmp_path):
    enc = Encoder("shapes-clip", device="cpu")
    assert enc.family == "clip" and enc.path == str(shapes_clip)
    check_indexes_like_reference(enc, shapes_clip, images, tmp_path)


def check_indexes_like_reference(enc: Encoder, model_dir: str, images: Path, tmp_path: Path) -> None:
    """Index the images; stored rows, encode_images and encode_texts agree with the transformers loop."""
    summary = index_collection([str(images)], tmp_path / "s.pixdex", model=enc, progress=False, workers=0)
    assert (summary.indexed, summary.failed) == (5, 0)
    store = Store.open(tmp_path / "s.pixdex")
    assert store.model["fingerprint"] == enc.info.fingerprint and store.dim == enc.dim
    paths = [Path(p) for p in store.metadata()["path"].to_pylist()]
    _, stored = store.embeddings()
    want = reference_embeddings(model_dir, paths)
    cosines = (stored * want).sum(axis=1) / np.linalg.norm(stored, axis=1)
    assert cosines.min() >= 0.999, dict(zip([p.name for p in paths], cosines.round(5)))
    # the same through the API, for any image input kind
    direct = enc.encode_images([str(paths[0]), paths[1].read_bytes(), Image.open(paths[2])])
    assert np.allclose(np.linalg.norm(direct, axis=1), 1, atol=1e-5)
    assert ((direct * want[:3]).sum(axis=1) >= 0.999).all()
    texts = enc.encode_texts(["a red circle", "two blue squares on the left"])
    assert texts.shape == (2, enc.dim) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)


def test_siglip_text_is_padded_like_the_pipeline(model_dirs):
    enc = Encoder(model_dirs["siglip"], device="cpu")
    assert enc.tokenize(["a red circle"])["input_ids"].shape[1] == 64
    assert enc.logit_bias is not None
    assert Encoder(model_dirs["clip"], device="cpu").logit_bias is None


def test_store_refuses_another_model(model_dirs, images, tmp_path):
    store = tmp_path / "s.pixdex"
    index_collection([str(images / "a.png")], store, model=model_dirs["clip"], device="cpu", progress=False,
                     workers=0)
    with pytest.raises(ModelMismatchError) as err:
        index_collection([str(images)], store, model=model_dirs["siglip"], device="cpu", progress=False,
                         workers=0)
    message = str(err.value)
    assert model_dirs["clip"] in message and "--model" in message and "\n" not in message
    assert Store.open(store).count == 1  # nothing was written


def test_missing_hub_model_says_how_to_pass_a_local_one(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(DEFAULT_MODEL, "config.json"), str):
        pytest.skip(f"{DEFAULT_MODEL} is cached on this machine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PixdexError) as err:
        Encoder(DEFAULT_MODEL, device="cpu")
    message = str(err.value)
    assert DEFAULT_MODEL in message and "--model PATH" in message and "\n" not in message


def test_model_folder_is_recorded_by_absolute_path(model_dirs, monkeypatch):
    folder = Path(model_dirs["clip"])
    monkeypatch.chdir(folder.parent)
    enc = Encoder(folder.name, device="cpu")
    assert enc.info.name == str(folder.resolve())


def test_pil_and_bytes_inputs_agree_with_paths(model_dirs, images):
    enc = Encoder(model_dirs["clip"], device="cpu")
    path = images / "b.jpg"
    by_path = enc.encode_images(str(path))
    by_pil = enc.encode_images(Image.open(path))
    by_bytes = enc.encode_images(io.BytesIO(path.read_bytes()).getvalue())
    assert np.allclose(by_path, by_pil, atol=1e-5) and np.allclose(by_path, by_bytes, atol=1e-5)


def test_the_fingerprint_names_the_weights_not_the_folder_or_the_dtype(tmp_path, tiny_clip):
    """A store indexed on a GPU (float16) must open on a CPU (float32), and a moved model folder is the same
    model; other weights are another model."""
    import json
    import shutil

    from models import save_random_clip

    moved = shutil.copytree(tiny_clip, tmp_path / "elsewhere" / "model")
    here = Encoder(tiny_clip, device="cpu")
    there = Encoder(str(moved), device="cpu")
    half = Encoder(tiny_clip, device="cpu", dtype=torch.float16)
    assert here.fingerprint == there.fingerprint == half.fingerprint
    config = json.loads((moved / "config.json").read_text())
    config["transformers_version"] = "4.0.0"  # written by another transformers release
    (moved / "config.json").write_text(json.dumps(config))
    assert Encoder(str(moved), device="cpu").fingerprint == here.fingerprint
    other = Encoder(save_random_clip(tmp_path / "other", seed=1), device="cpu")
    assert other.fingerprint != here.fingerprint


def test_a_store_with_the_older_fingerprint_opens_and_is_updated_by_the_next_index(tmp_path, tiny_clip,
                                                                                shapes_dir):
    import json

    enc = Encoder(tiny_clip, device="cpu")
    store = tmp_path / "old.pixdex"
    index_collection([str(shapes_dir)], store, model=enc, progress=False, workers=0)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["model"]["fingerprint"] = enc.legacy_fingerprint  # what pixdex recorded before
    (store / "manifest.json").write_text(json.dumps(manifest))
    Store.open(store).check_model(enc.info)  # still this store's model
    index_collection([str(shapes_dir)], store, model=enc, progress=False, workers=0)
    assert Store.open(store).model["fingerprint"] == enc.fingerprint
