"""Bulk tagging from stored embeddings: same answers as the pipeline, outputs, tags in the store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from classify.prompts import CLIP_IMAGENET_80, LabelSet, label_embeddings, read_labels_file, resolve_templates
from classify.scoring import Scoring, top_k_block, top_k_block_torch
from classify.tagging import tag_store
from indexer.encoder import Encoder
from indexer.errors import ModelMismatchError, PixdexError
from indexer.store import Store, StoreWriter
from pixdex.cli import main

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]


def collect(store, labels, **kw) -> list[dict]:
    tables: list[pa.Table] = []
    tag_store(store, labels, emit=tables.append, progress=False, **kw)
    return pa.concat_tables(tables).to_pylist()


def fp16_tolerance(logit_scale: float) -> float:
    """Largest score change float16 storage can cause: each unit vector moves by at most 2**-11, so a
    logit by logit_scale * 2**-11, and a softmax/sigmoid score by half of that."""
    return 0.5 * logit_scale * 2.0**-11 + 1e-6


def assert_matches_pipeline(rows: list[dict], pipe, labels: list[str], template: str, tol: float) -> None:
    for row in rows:
        ref = pipe(row["path"], candidate_labels=labels, hypothesis_template=template)
        ref_scores = {r["label"]: r["score"] for r in ref}
        got = dict(zip(row["labels"], row["scores"]))
        assert set(got) == set(ref_scores)
        assert max(abs(got[x] - ref_scores[x]) for x in got) <= tol
        # same order, except that labels closer than the float16 error may swap
        for a, b in zip(row["labels"], [r["label"] for r in ref]):
            assert a == b or abs(ref_scores[a] - ref_scores[b]) <= 2 * tol


def test_stored_path_matches_pipeline_for_clip(tiny_store, tiny_clip):
    from transformers import pipeline

    pipe = pipeline("zero-shot-image-classification", model=tiny_clip)
    enc = Encoder(tiny_clip, device="cpu")
    rows = collect(tiny_store, SHAPES, top_k=len(SHAPES), template="a {} shape")
    assert len(rows) == Store.open(tiny_store).count
    assert_matches_pipeline(rows[:12], pipe, SHAPES, "a {} shape", fp16_tolerance(enc.logit_scale))
    assert all(r["label"] == r["labels"][0] and r["score"] == r["scores"][0] for r in rows)


def test_stored_path_matches_pipeline_for_siglip(tmp_path, shapes_dir):
    from models import small_siglip_store
    from transformers import pipeline

    model, store = small_siglip_store(tmp_path, shapes_dir, 6)
    rows = collect(store, SHAPES, top_k=3)
    pipe = pipeline("zero-shot-image-classification", model=model)
    for row in rows:
        ref = pipe(row["path"], candidate_labels=SHAPES)[:3]
        assert row["labels"] == [r["label"] for r in ref]
        assert np.allclose(row["scores"], [r["score"] for r in ref], atol=fp16_tolerance(np.exp(2.3)))


def test_blocks_threads_and_torch_kernel_agree(tiny_store):
    a = collect(tiny_store, SHAPES, top_k=3, batch_rows=4096, workers=1)
    b = collect(tiny_store, SHAPES, top_k=3, batch_rows=5, workers=2)
    assert a == b
    st = Store.open(tiny_store)
    _ids, emb = st.embeddings(np.float16)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((st.dim, 40)).astype(np.float32)
    for scoring in (Scoring("clip", 14.0), Scoring("siglip", 10.0, -3.0)):
        for k in (1, 5, 12):  # repeated argmax and argpartition paths
            idx, sc = top_k_block(emb, w, scoring, k)
            tidx, tsc = top_k_block_torch(emb, torch.from_numpy(w), scoring, k)
            assert (idx == tidx).all()
            assert np.allclose(sc, tsc, atol=1e-5)
            # reference: full scores, then a stable sort
            full = scoring.scores(emb.astype(np.float32) / np.linalg.norm(emb.astype(np.float32), axis=1,
                                  keepdims=True), (w / scoring.logit_scale).T)
            ref = np.argsort(-full, axis=1, kind="stable")[:, :k]
            assert (idx == ref).all()
            assert np.allclose(sc, np.take_along_axis(full, ref, axis=1), atol=1e-5)


def test_multi_label_clip_calibration_and_thresholds(tiny_store, tiny_clip, tmp_path):
    enc = Encoder(tiny_clip, device="cpu")
    st = Store.open(tiny_store)
    _ids, emb = st.embeddings()
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = SHAPES[:4]
    lab = label_embeddings(enc, labels, resolve_templates())
    bg = label_embeddings(enc, ["nothing at all"], resolve_templates())[0]
    # softmax over {label, background}
    expected = 1 / (1 + np.exp(-enc.logit_scale * (emb @ lab.T - (emb @ bg)[:, None])))
    thr = float(np.median(expected))
    per_label = {"star": 0.2}
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("circle\nsquare\ntriangle\nstar\t0.2\n")
    file_labels, file_thr = read_labels_file(labels_file)
    assert (file_labels, file_thr) == (labels, per_label)
    rows = collect(st, labels, mode="multi", threshold=thr, thresholds=per_label, background="nothing at all")
    cut = np.array([per_label.get(x, thr) for x in labels])
    for row, exp in zip(rows, expected):
        want = [labels[j] for j in np.argsort(-exp, kind="stable") if exp[j] >= cut[j]]
        near = np.abs(exp - cut) < 2e-3  # float16 storage may move a score across its cut
        assert ([x for x in row["labels"] if not near[labels.index(x)]]
                == [x for x in want if not near[labels.index(x)]])
        assert np.allclose(row["scores"], exp[[labels.index(x) for x in row["labels"]]], atol=2e-3)
    assert 0 < sum(len(r["labels"]) for r in rows) < len(rows) * len(labels)
    capped = collect(st, labels, mode="multi", threshold=0.0, top_k=2, background="nothing at all")
    assert all(len(r["labels"]) == 2 for r in capped)


def test_outputs_join_ids_and_paths_in_every_format(tiny_store, tmp_path):
    st = Store.open(tiny_store)
    expected = collect(st, SHAPES, top_k=2)
    paths = dict(zip(st.ids().tolist(), st.paths(st.ids())))
    for row in expected:
        assert row["path"] == paths[row["id"]]
    for ext in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"tags.{ext}"
        summary = tag_store(st, SHAPES, top_k=2, out=out, progress=False)
        assert summary.images == len(expected) and out.is_file()
        if ext == "parquet":
            rows = pq.read_table(out).to_pylist()
        elif ext == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            rows = pacsv.read_csv(out).to_pylist()
            for r in rows:
                r["labels"] = r["labels"].split(";")
                r["scores"] = [float(x) for x in str(r["scores"]).split(";")]
        assert [(r["id"], r["path"], r["label"], r["labels"]) for r in rows] == \
            [(r["id"], r["path"], r["label"], r["labels"]) for r in expected]
        assert np.allclose([r["scores"] for r in rows], [r["scores"] for r in expected], atol=1e-6)
    with pytest.raises(PixdexError, match="unknown format"):
        tag_store(st, SHAPES, out=tmp_path / "tags.xlsx", progress=False)


def test_save_as_writes_filterable_tag_columns(tiny_store, tmp_path):
    from search.filters import parse_filter

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    with StoreWriter(store) as w:  # removed rows are not tagged
        w.delete([0, 1])
    rows = collect(store, SHAPES)
    assert [r["id"] for r in rows] == Store.open(store).ids().tolist() and rows[0]["id"] == 2
    tag_store(store, SHAPES, save_as="shape_tag", progress=False)
    tag_store(store, SHAPES, mode="multi", threshold=0.0, top_k=2, save_as="shapes_multi", progress=False)
    meta = Store.open(store).metadata()
    assert {"shape_tag", "shape_tag_score", "shapes_multi", "shapes_multi_score"} <= set(meta.column_names)
    assert meta["shape_tag"].to_pylist() == [r["label"] for r in rows]
    assert np.allclose(meta["shape_tag_score"].to_pylist(), [r["score"] for r in rows])
    assert all(len(x) == 2 for x in meta["shapes_multi"].to_pylist())
    top = rows[0]["label"]
    f = parse_filter(f"shape_tag = '{top}'")
    f.check(meta.schema)
    kept = np.asarray(f.mask(meta))
    assert meta["id"].to_numpy()[kept].tolist() == [r["id"] for r in rows if r["label"] == top]
    f = parse_filter(f"shapes_multi = '{top}'")  # any element of the multi-label list
    f.check(meta.schema)
    assert np.asarray(f.mask(meta)).sum() >= kept.sum()


def test_ensemble_is_the_normalised_mean_of_template_embeddings(tiny_clip):
    assert len(CLIP_IMAGENET_80) == len(set(CLIP_IMAGENET_80)) == 80
    assert all(t.count("{}") == 1 for t in CLIP_IMAGENET_80)
    enc = Encoder(tiny_clip, device="cpu")
    templates = resolve_templates(ensemble="clip-imagenet-80")
    got = label_embeddings(enc, ["circle", "star"], templates)
    each = np.stack([enc.encode_texts([t.format(x) for t in templates]) for x in ["circle", "star"]])
    mean = each.mean(axis=1)
    assert np.allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    assert np.allclose(label_embeddings(enc, ["circle"], ["{}"]), enc.encode_texts(["circle"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": ["a", "a"]}, "more than once"),
    ({"labels": ["a"], "ensemble": "nope"}, "unknown prompt ensemble"),
    ({"labels": ["a"], "template": "no placeholder"}, "placeholder"),
    ({"labels": ["a"], "templates": ["{}", "a {name}"]}, "valid format"),
    ({"labels": ["a"], "save_as": "my tags"}, "--save-as"),
    ({"labels": ["a"], "save_as": "path"}, "shadow"),
    ({"labels": ["a"], "mode": "multi", "threshold": 2.0}, "threshold must be a number from 0 to 1"),
    ({"labels": ["a"], "mode": "multi", "thresholds": {"b": 0.5}}, "unknown label"),
    ({"labels": ["a"], "top_k": 0}, "top_k must be a whole number"),
])
def test_bad_requests_are_one_line_errors(tiny_store, kwargs, message):
    with pytest.raises(PixdexError, match=message) as err:
        tag_store(tiny_store, progress=False, **kwargs)
    assert "\n" not in str(err.value)


def test_another_model_is_refused(tiny_store, tmp_path):
    from models import save_random_clip

    other = save_random_clip(tmp_path / "other", seed=1)
    with pytest.raises(ModelMismatchError, match="was built with model"):
        tag_store(tiny_store, SHAPES, model=str(other), progress=False)


def test_label_set_weights_fold_scale_and_background(tiny_clip):
    enc = Encoder(tiny_clip, device="cpu")
    ls = LabelSet.build(enc, ["circle", "star"], ["{}"], background="something")
    w, bias = ls.weights("single")
    assert bias == 0.0 and np.allclose(w, ls.embeddings.T * enc.logit_scale)
    w, _ = ls.weights("multi")
    assert np.allclose(w, (ls.embeddings - ls.background).T * enc.logit_scale, atol=1e-6)


def test_cli_classify_and_classify_image(tiny_store, tiny_clip, tmp_path, capsys):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(SHAPES) + "\n")
    out = tmp_path / "t.parquet"
    assert main(["classify", str(tiny_store), "--labels-file", str(labels_file), "--ensemble",
                 "clip-imagenet-80", "--top-k", "2", "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == Store.open(tiny_store).count and summary["templates"] == 80
    assert pq.read_table(out).column_names == ["id", "path", "label", "score", "labels", "scores"]
    assert main(["classify", str(tiny_store), "--labels", "circle, star", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["id", "path", "label", "score"]
    assert len(lines) == 1 + Store.open(tiny_store).count
    first = lines[1].split("\t")
    assert first[1] == Store.open(tiny_store).paths([int(first[0])])[0] and first[2] in ("circle", "star")

    image = Store.open(tiny_store).paths([0])[0]
    assert main(["classify-image", image, "--labels", "circle,star,square", "--model", tiny_clip,
                 "--json"]) == 0
    from transformers import pipeline

    ref = pipeline("zero-shot-image-classification", model=tiny_clip)(
        image, candidate_labels=["circle", "star", "square"])
    got = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in got] == [r["label"] for r in ref]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in ref], atol=1e-5)
    assert main(["classify-image", image, image, "--labels", "circle,star", "--model", tiny_clip, "--json",
                 "--top-k", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 2 and all(len(r) == 1 for r in got)
    assert main(["classify", str(tiny_store), "--labels", " , "]) == 2
    assert "holds no label" in capsys.readouterr().err
    assert main(["classify-image", str(tmp_path / "missing.png"), "--labels", "a", "--model", tiny_clip]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_shapes_clip_tags_saved_and_stored_path_matches_pipeline(shapes_store, shapes_clip, tmp_path):
    from transformers import pipeline

    store = tmp_path / "store"
    shutil.copytree(shapes_store, store)
    rows = collect(store, SHAPES, top_k=len(SHAPES))
    pipe = pipeline("zero-shot-image-classification", model=shapes_clip)
    enc = Encoder(shapes_clip, device="cpu")
    assert_matches_pipeline(rows[:16], pipe, SHAPES, "This is a photo of {}.",
                            min(1e-3, fp16_tolerance(enc.logit_scale)))
    assert main(["classify", str(store), "--labels", ",".join(SHAPES), "--save-as", "shape_pred",
                 "--no-progress"]) == 0
    meta = Store.open(store).metadata()
    assert meta["shape_pred"].to_pylist() == [r["label"] for r in rows]


def test_tagging_streams_without_loading_the_whole_store(tiny_store, tmp_path, monkeypatch):
    """Only iter_embeddings blocks and per-shard (id, path) columns are read: nothing store-sized."""
    expected = collect(tiny_store, SHAPES, top_k=2)

    def refuse(*a, **k):
        raise AssertionError("tagging must not load the whole store")

    monkeypatch.setattr(Store, "embeddings", refuse)
    monkeypatch.setattr(Store, "metadata", refuse)
    sizes = []
    original = Store.iter_embeddings

    def spy(self, batch_rows=65536, *a, **k):
        for ids, emb in original(self, batch_rows, *a, **k):
            sizes.append(len(ids))
            yield ids, emb

    monkeypatch.setattr(Store, "iter_embeddings", spy)
    tag_store(tiny_store, SHAPES, top_k=2, batch_rows=7, out=tmp_path / "t.parquet", progress=False)
    assert max(sizes) <= 7 and sum(sizes) == len(expected)
    got = pq.read_table(tmp_path / "t.parquet").to_pylist()
    assert ([(r["id"], r["path"], r["labels"]) for r in got]
            == [(r["id"], r["path"], r["labels"]) for r in expected])
    assert np.allclose([r["scores"] for r in got], [r["scores"] for r in expected])


def test_shapes_clip_multi_label_finds_both_colours(shapes_store):
    """Multi-label mode with the background calibration tags two-object images with both colours."""
    import os

    from pixdex.demo.world import COLORS, read_labels

    labels_csv = next(shapes_store.parent.glob("images/labels.csv"))
    truth = {os.path.realpath(labels_csv.parent / r["file"]): set(r["color"].split(";"))
             for r in read_labels(labels_csv)}
    rows = collect(shapes_store, list(COLORS), mode="multi", threshold=0.3, template="a photo of a {} shape.")
    tp = fp = fn = 0
    for r in rows:
        t, p = truth[os.path.realpath(r["path"])], set(r["labels"])
        tp, fp, fn = tp + len(t & p), fp + len(p - t), fn + len(t - p)
    assert tp / (tp + fp) >= 0.8 and tp / (tp + fn) >= 0.8, (tp, fp, fn)
    assert any(len(r["labels"]) >= 2 for r in rows)
