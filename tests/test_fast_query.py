"""The ONNX query path (indexer.onnx_cache, text_onnx, image_onnx): same query embeddings as transformers,
checked cache, fallback with a notice."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from models import save_random_clip, save_random_siglip, save_random_siglip2

from indexer.encoder import Encoder
from indexer.image_onnx import load_image_encoder
from indexer.onnx_cache import check_export, export_dir, forget_loaded
from indexer.onnx_export import ensure_export, probe_images
from indexer.store import Store
from indexer.text_onnx import load_text_encoder
from search.searcher import Searcher

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "a red circle", "A LARGE Blue Square, on the LEFT!!", "naïve café 日本語 🙂 Grüße", "!!!", "?! ...",
    "a photo of " + "many small shapes " * 40,  # far past 77 (and 64) tokens: truncated
    "  tabs\tand\nnewlines  ", "x",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, tiny_clip, shapes_clip) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {"clip": tiny_clip, "shapes-clip": shapes_clip,
            "siglip": str(save_random_siglip(root / "siglip", seed=3)),
            "siglip2": str(save_random_siglip2(root / "siglip2", seed=4))}


def fresh(fingerprint: str):
    """Load the export as a new process would (not the per-process cached encoder)."""
    forget_loaded(fingerprint)
    return load_text_encoder(fingerprint)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["clip", "shapes-clip", "siglip", "siglip2"])
def test_fast_path_matches_transformers(family_models, family, monkeypatch):
    """As a server opens the export (optimised) and as a one-shot query does (the saved fused graph)."""
    import indexer.onnx_cache as onnx_cache

    enc = Encoder(family_models[family], device="cpu")
    ok, why = ensure_export(enc, "text")
    assert ok, why
    assert check_export(enc.fingerprint, "text").sidecar["fused"]
    for quick in (False, True):
        monkeypatch.setattr(onnx_cache, "_QUICK_START", quick)
        fast, why = fresh(enc.fingerprint)
        assert fast is not None, why
        for batch in [[t] for t in TEXTS] + [TEXTS]:  # one by one, and padded together
            want = {k: v.numpy() for k, v in enc.tokenize(batch).items()}
            got = fast.tokenizer(batch)
            assert set(got) == set(want)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} for {batch[0][:30]!r}")
            assert cosines(fast.encode_texts(batch), enc.encode_texts(batch)).min() >= 0.9999
    if family == "siglip":  # SigLIP pads every query to 64 tokens; CLIP truncates at its position limit
        assert fast.tokenizer(["a"])["input_ids"].shape == (1, 64)
    else:
        limit = enc.config.text_config.max_position_embeddings
        assert fast.tokenizer([TEXTS[5]])["input_ids"].shape == (1, limit)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["clip", "shapes-clip", "siglip", "siglip2"])
def test_image_path_matches_transformers_or_is_refused(family_models, family, monkeypatch):
    """Images resized and cropped with PIL (indexer.pixels) through the ONNX vision tower equal the model's
    own processor + transformers, opened optimised or as saved (fused); SigLIP2's NaFlex patches are not
    replayed, so its images keep transformers."""
    import indexer.onnx_cache as onnx_cache

    enc = Encoder(family_models[family], device="cpu")
    ok, why = ensure_export(enc, "image")
    forget_loaded(enc.fingerprint)
    fast, _ = load_image_encoder(enc.fingerprint)
    if family == "siglip2":
        assert not ok and "cannot use the fast path for images" in why and fast is None
        return
    assert ok, why
    assert check_export(enc.fingerprint, "image").sidecar["fused"]
    images = probe_images()
    for quick in (False, True):
        monkeypatch.setattr(onnx_cache, "_QUICK_START", quick)
        forget_loaded(enc.fingerprint)
        fast, _ = load_image_encoder(enc.fingerprint)
        assert cosines(fast.encode_images(images), enc.encode_images(images)).min() >= 0.9999


def test_search_uses_the_export_and_ranks_identically(shapes_store):
    queries = ["a red circle", "a blue square", "a small green triangle on the left", "a yellow star"]
    fast = Searcher(shapes_store)
    slow = Searcher(shapes_store, model="shapes-clip")  # an explicit model always runs transformers
    assert fast.text_encoder is not None and slow.text_encoder is None
    for got, want in zip(fast.search(queries, k=20), slow.search(queries, k=20)):
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


def new_images(store: Path, folder: Path, n: int = 3) -> list[Path]:
    """n query images the store does not hold (rotated copies of stored ones: new bytes)."""
    out = []
    for i, src in enumerate(sorted((store.parent / "images").glob("*.png"))[:n]):
        out.append(folder / f"new-{i}.png")
        Image.open(src).rotate(90).save(out[-1])
    return out


def test_image_queries_use_the_export_and_rank_identically(shapes_store, tmp_path):
    images = new_images(shapes_store, tmp_path)
    fast = Searcher(shapes_store)
    slow = Searcher(shapes_store, model="shapes-clip")
    assert fast.fast_encoder("image") is not None and slow.fast_encoder("image") is None
    for got, want in zip(fast.search_image(images, k=15), slow.search_image(images, k=15)):
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)


def test_a_stored_image_as_query_answers_from_its_stored_vector(shapes_store, tmp_path, monkeypatch):
    """A query image with the same bytes as a stored one (that file, or a copy anywhere) ranks like the
    stored item's `id:` query and loads no model: it works with no export in the cache at all."""
    monkeypatch.setenv("PIXDEX_CACHE", str(tmp_path / "empty-cache"))
    forget_loaded(Store.open(shapes_store).model["fingerprint"])
    stored = sorted((shapes_store.parent / "images").glob("*.jpg"))[4]
    copy = tmp_path / "holiday" / "copy.jpg"
    copy.parent.mkdir()
    copy.write_bytes(stored.read_bytes())
    s = Searcher(shapes_store)
    ident = s.id_for_path(str(stored))
    want = s.search(f"id:{ident}", k=10)
    for query in (stored, str(copy), copy.read_bytes()):
        got = s.search_image(query, k=10)
        assert [h.id for h in got] == [h.id for h in want]
        assert got[0].id == ident and got[0].score > 0.999
    assert s.queries.loaded is None  # no export in this cache, and transformers never loaded
    # mixed with a new image in one batch: each gets its own vector, in order
    fresh_image = new_images(shapes_store, tmp_path)[0]
    monkeypatch.delenv("PIXDEX_CACHE")
    both = Searcher(shapes_store).search_image([fresh_image, copy], k=3)
    assert both[1][0].id == ident and both[0][0].id != ident


def test_a_one_shot_query_on_a_big_store_encodes_rather_than_scans(shapes_store, monkeypatch):
    """Past CHEAP_LOOKUP_ITEMS a one-shot (CLI) query does not read the store's sha256 column to find its
    image (the vision tower is cheaper); a long-lived Searcher reads it once and answers from it."""
    import indexer.onnx_cache as onnx_cache
    import search.encoding as encoding

    stored = sorted((shapes_store.parent / "images").glob("*.png"))[2]
    monkeypatch.setattr(encoding, "CHEAP_LOOKUP_ITEMS", 10)
    monkeypatch.setattr(onnx_cache, "_QUICK_START", True)
    one_shot = Searcher(shapes_store)
    hits = one_shot.search_image(stored, k=3)
    assert not one_shot.store.content_table_loaded and one_shot.fast_encoder("image") is not None
    assert hits[0].id == one_shot.id_for_path(str(stored))  # encoded: still finds itself first
    monkeypatch.setattr(onnx_cache, "_QUICK_START", False)
    server = Searcher(shapes_store)
    assert server.search_image(stored, k=3)[0].id == hits[0].id
    assert server.store.content_table_loaded


def test_the_transformers_path_encodes_stored_images_too(shapes_store):
    """PIXDEX_FAST=0 is the reference path: every query image goes through the model."""
    stored = sorted((shapes_store.parent / "images").glob("*.png"))[0]
    fast, fast_err = cli_json(shapes_store, "--image", str(stored), "-k", "10", fast=True)
    slow, slow_err = cli_json(shapes_store, "--image", str(stored), "-k", "10", fast=False)
    assert fast_err == "" and "fast path turned off" in slow_err
    assert [h["id"] for h in fast[0]] == [h["id"] for h in slow[0]]
    np.testing.assert_allclose([h["score"] for h in fast[0]], [h["score"] for h in slow[0]], atol=2e-3)


def test_image_files_encoded_ahead_are_taken_only_while_unchanged(shapes_store, tmp_path):
    """encode_files_ahead (the CLI starts it before opening the store) gives the vectors the encoder gives;
    a file changed since is encoded again, not answered with its old vector."""
    import indexer.image_onnx as image_onnx

    images = new_images(shapes_store, tmp_path)
    fingerprint = Store.open(shapes_store).model["fingerprint"]
    forget_loaded(fingerprint)
    image_onnx.encode_files_ahead(fingerprint, [str(p) for p in images])
    for job in image_onnx._JOBS:
        job.thread.join()
    Image.open(images[0]).rotate(90).save(images[1])  # new content after its encoding ahead
    enc, _ = load_image_encoder(fingerprint)
    want = enc.encode_pil([Image.open(p).convert("RGB") for p in images])
    runs = []
    real_run = enc.session.run
    enc.session.run = lambda *a: runs.append(1) or real_run(*a)
    try:
        got = enc.encode_images([str(p) for p in images])
    finally:
        del enc.session.run
    assert len(runs) == 1  # only the changed file went through the tower again
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not image_onnx._AHEAD  # taken (or dropped) once: a later query of the same file encodes it


def test_a_cli_image_query_answers_alike_and_exits_cleanly(shapes_store, tmp_path):
    """New images (encoded ahead), a stored one (whose work ahead is stopped at exit) and a corrupt file: the
    CLI ranks like an in-process Searcher, and a bad file still gets its one-line error, no traceback."""
    stored = sorted((shapes_store.parent / "images").glob("*.png"))[3]
    images = [*new_images(shapes_store, tmp_path, 2), stored]
    args = [a for p in images for a in ("--image", str(p))]
    got, err = cli_json(shapes_store, *args, "-k", "8", fast=True)
    assert err == ""
    want = Searcher(shapes_store).search_image(images, k=8)
    assert [[h["id"] for h in q] for q in got] == [[h.id for h in q] for q in want]
    np.testing.assert_allclose([h["score"] for q in got for h in q], [h.score for q in want for h in q],
                               atol=1e-6)
    bad = tmp_path / "cut.png"
    bad.write_bytes(images[0].read_bytes()[:200])
    out = subprocess.run([sys.executable, "-m", "pixdex", "search", str(shapes_store),
                          "--image", str(images[0]), "--image", str(bad)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0 and str(bad) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_a_text_query_imports_neither_torch_nor_transformers_nor_pandas(shapes_store):
    code = ("import sys; from search import Searcher; s = Searcher(sys.argv[1]); "
            "assert s.search('a red circle', k=3) and s.text_encoder is not None; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code, str(shapes_store)], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=120)
    assert json.loads(out.stdout) == []


def cli_json(store: Path, *args: str, fast: bool) -> tuple[list, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIXDEX_FAST": "1" if fast else "0"}
    out = subprocess.run([sys.executable, "-m", "pixdex", "search", str(store), *args, "--json"], check=True,
                         capture_output=True, text=True, env=env, timeout=300)
    return json.loads(out.stdout), out.stderr


@pytest.mark.slow
def test_cli_json_is_the_same_on_both_paths(shapes_store):
    args = ("a red circle", "naïve blue square!!", "2:a star", "-", "a circle", "-k", "7")
    fast, fast_err = cli_json(shapes_store, *args, fast=True)
    slow, slow_err = cli_json(shapes_store, *args, fast=False)
    assert fast_err == ""
    assert "fast path turned off" in slow_err and len(slow_err.strip().splitlines()) == 1
    assert [[set(h) for h in q] for q in fast] == [[{"rank", "id", "path", "score"}] * 7] * 3
    assert [[(h["rank"], h["id"], h["path"]) for h in q] for q in fast] == \
        [[(h["rank"], h["id"], h["path"]) for h in q] for q in slow]
    np.testing.assert_allclose([h["score"] for q in fast for h in q], [h["score"] for q in slow for h in q],
                               atol=1e-5)


@pytest.fixture
def own_model(tmp_path) -> tuple[str, Encoder]:
    """A private model with its own export (tests below damage them): weights of its own, since the export
    cache is keyed by the weights' fingerprint, not by the folder."""
    seed = int(hashlib.sha1(tmp_path.name.encode()).hexdigest()[:6], 16)
    path = save_random_clip(tmp_path / "model", seed=seed)
    enc = Encoder(str(path), device="cpu")
    assert ensure_export(enc, "text")[0]
    return str(path), enc


def graph_file(enc: Encoder) -> Path:
    folder = export_dir(enc.fingerprint, "text")
    return folder / json.loads((folder / "export.json").read_text())["graph"]["file"]


def assert_rebuilt(enc: Encoder) -> None:
    """The next writer replaces a damaged text export with one that matches transformers."""
    assert ensure_export(enc, "text")[0]
    fast, _ = fresh(enc.fingerprint)
    assert cosines(fast.encode_texts(TEXTS), enc.encode_texts(TEXTS)).min() >= 0.9999


def test_truncated_export_is_detected_and_rebuilt(own_model):
    _, enc = own_model
    graph = graph_file(enc)
    with open(graph, "r+b") as fh:
        fh.truncate(graph.stat().st_size // 2)
    assert "truncated" in check_export(enc.fingerprint, "text").reason
    assert fresh(enc.fingerprint)[0] is None
    assert_rebuilt(enc)


def test_a_fused_graph_that_is_not_exact_is_not_used(own_model, monkeypatch):
    """When onnxruntime's fused graph fails the exactness check, the plain graph is the export."""
    import indexer.onnx_export as onnx_export

    _, enc = own_model
    real = onnx_export._both_sessions

    def reject_fused(graph):
        if graph.name == "fused.onnx":
            raise onnx_export.Unsupported("ONNX text embedding differs from transformers (cosine 0.99)")
        return real(graph)

    monkeypatch.setattr(onnx_export, "_both_sessions", reject_fused)
    assert ensure_export(enc, "text", force=True)[0]
    sidecar = check_export(enc.fingerprint, "text").sidecar
    assert sidecar["fused"] is False and "-fused" not in sidecar["weights"]["file"]
    fast, _ = fresh(enc.fingerprint)
    assert cosines(fast.encode_texts(TEXTS), enc.encode_texts(TEXTS)).min() >= 0.9999
    assert sorted(p.name for p in graph_file(enc).parent.iterdir()) == sorted(
        [sidecar[part]["file"] for part in ("graph", "weights", "tokenizer")] + ["export.json"])


def test_a_fused_export_from_another_onnxruntime_is_rebuilt(own_model):
    """Fused kernels belong to the onnxruntime that checked them: after an upgrade the export is stale."""
    _, enc = own_model
    sidecar_file = export_dir(enc.fingerprint, "text") / "export.json"
    meta = json.loads(sidecar_file.read_text())
    meta["versions"]["onnxruntime"] = "1.0.0"
    sidecar_file.write_text(json.dumps(meta))
    reason = check_export(enc.fingerprint, "text").reason
    assert "fused by onnxruntime 1.0.0" in reason and "no fast text export" in reason
    assert fresh(enc.fingerprint)[0] is None
    assert_rebuilt(enc)


def test_weights_file_beside_the_graph_is_checked(own_model):
    """The weights live in their own file (memory-mapped at load); one cut short or rewritten in place is
    caught by the sidecar's stamp, and the export is rebuilt."""
    _, enc = own_model
    folder = export_dir(enc.fingerprint, "text")
    meta = json.loads((folder / "export.json").read_text())
    weights = folder / meta["weights"]["file"]
    assert weights.stat().st_size > 2 * graph_file(enc).stat().st_size  # the big tensors left the graph
    assert oct(weights.stat().st_mode & 0o777) == oct(graph_file(enc).stat().st_mode & 0o777)
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)
    weights.write_bytes(bytes(data))
    assert "was changed" in check_export(enc.fingerprint, "text").reason
    assert fresh(enc.fingerprint)[0] is None
    assert_rebuilt(enc)


def test_an_export_in_an_older_format_is_replaced(own_model):
    """Exports written before the weights moved to their own file (format 1) are not used, and the next
    writer replaces them."""
    _, enc = own_model
    sidecar = export_dir(enc.fingerprint, "text") / "export.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "format": 1}))
    assert "current format" in check_export(enc.fingerprint, "text").reason
    assert fresh(enc.fingerprint)[0] is None
    assert ensure_export(enc, "text")[0] and fresh(enc.fingerprint)[0] is not None


def test_writer_killed_mid_write_leaves_nothing_usable(own_model):
    """A kill before the sidecar is renamed into place: a partial graph under its final name and no sidecar,
    or the old sidecar next to a graph that is not the one it describes. Neither is used."""
    _, enc = own_model
    folder, graph = export_dir(enc.fingerprint, "text"), graph_file(enc)
    data = graph.read_bytes()
    graph.write_bytes(data[: len(data) // 3])  # same name, partial content, new mtime
    assert fresh(enc.fingerprint)[0] is None
    (folder / "export.json").unlink()
    (folder / ".tmp-999-1").mkdir()
    (folder / ".tmp-999-1" / "text.onnx").write_bytes(data[:1000])
    assert "no fast text export" in check_export(enc.fingerprint, "text").reason
    assert ensure_export(enc, "text")[0] and fresh(enc.fingerprint)[0] is not None


def test_changed_model_files_make_the_export_stale(own_model):
    path, enc = own_model
    config = Path(path) / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "note": "retrained"}))
    assert "model file changed" in check_export(enc.fingerprint, "text").reason
    assert fresh(enc.fingerprint)[0] is None


def test_store_with_an_unexportable_model_falls_back_with_a_notice(tmp_path, shapes_dir, monkeypatch, caplog):
    """The exporter fails (as for an architecture the ONNX exporter cannot trace): the verdict is recorded
    once, and text queries go through transformers with a one-line notice: same results as before."""
    import torch

    from indexer.job import index_collection

    def broken(*a, **k):
        raise RuntimeError("unsupported operator aten::magic")

    model = save_random_clip(tmp_path / "model", seed=5)
    monkeypatch.setattr(torch.onnx, "export", broken)
    store = tmp_path / "s.pixdex"
    with caplog.at_level(logging.WARNING):
        index_collection([str(shapes_dir)], store, model=str(model), progress=False, workers=0,
                         log=logging.getLogger("test").warning)
    assert any("ONNX export failed" in r.getMessage() for r in caplog.records)
    caplog.clear()
    s = Searcher(store)
    with caplog.at_level(logging.WARNING, logger="pixdex.search"):
        hits = s.search("a red circle", k=5)
    notices = [r.getMessage() for r in caplog.records if r.name == "pixdex.search"]
    assert len(notices) == 1 and "cannot use the fast path for texts" in notices[0]
    want = Searcher(store, model=str(model)).search("a red circle", k=5)
    assert [h.id for h in hits] == [h.id for h in want]


def test_a_query_process_writes_the_missing_export(shapes_store, tmp_path, monkeypatch, caplog):
    """A store indexed before exports existed: the first text query falls back, says so, and writes the
    export, so the next process gets the fast path."""
    monkeypatch.setenv("PIXDEX_CACHE", str(tmp_path / "empty-cache"))
    s = Searcher(shapes_store)
    fingerprint = s.store.model["fingerprint"]
    forget_loaded(fingerprint)
    with caplog.at_level(logging.WARNING, logger="pixdex.search"):
        slow = s.search("a red circle", k=5)
    assert any("writing the text export" in r.getMessage() for r in caplog.records)
    fast, why = fresh(fingerprint)
    assert fast is not None, why
    again = Searcher(shapes_store).search("a red circle", k=5)
    assert [h.id for h in again] == [h.id for h in slow]
    forget_loaded(fingerprint)


@pytest.mark.slow
def test_siglip_texts_with_literal_special_tokens_take_the_transformers_path(family_models):
    enc = Encoder(family_models["siglip"], device="cpu")
    assert ensure_export(enc, "text")[0]
    fast, _ = fresh(enc.fingerprint)
    assert fast.can_encode(["a red circle"]) and not fast.can_encode(["a red </s> circle"])


def test_cache_folder_is_not_a_store_file(shapes_store):
    """The export lives in the per-model cache, never inside the store (pixdex index owns the store)."""
    s = Searcher(shapes_store)
    assert s.text_encoder is not None
    assert shapes_store not in s.text_encoder.folder.parents
    assert not any(p.suffix == ".onnx" for p in shapes_store.rglob("*"))


@pytest.mark.parametrize("argv,allowed", [
    (["--help"], []), (["info", "{store}"], []), (["search", "{store}", "a red circle", "-k", "0"], []),
    (["search", "{store}", "id:3", "--json"], []),
    # a query image file starts encoding (onnxruntime) before the store is read; a stored one needs no more
    (["search", "{store}", "--image", "{image}"], ["onnxruntime?"]),
    (["search", "{store}", "--image", "{new_image}"], ["onnxruntime"]),
])
def test_commands_that_need_no_model_import_no_model_library(shapes_store, tmp_path, argv, allowed):
    """--help, info, a refused option and an id: query answer without torch, transformers, onnxruntime or
    pandas (0.3-0.5 s each); image queries with onnxruntime at most ("name?": may be imported)."""
    image = min((shapes_store.parent / "images").glob("*.png"))
    new_image = tmp_path / "new.png"
    Image.open(image).rotate(90).save(new_image)
    argv = [a.format(store=shapes_store, image=image, new_image=new_image) for a in argv]
    code = ("import contextlib, io, json, sys; from pixdex.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'pandas') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    imported = set(json.loads(out.stdout))
    assert {m for m in allowed if not m.endswith("?")} <= imported <= {m.rstrip("?") for m in allowed}
