"""Few-shot tagging: taught by examples, equal to zero-shot without them, saved taggers kept up to date."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest

from classify.fewshot import teach
from classify.scoring import Scoring
from classify.tagging import LabelSet, tag_store
from indexer.encoder import Encoder
from indexer.store import Store, StoreWriter
from pixdex.cli import main
from pixdex.demo import world

SHAPES = list(world.SHAPES)
PALETTE_TEMPLATE = "a photo of a {} coloured shape."


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def truth_by_id(store: Store, labels_csv) -> dict[int, dict]:
    rows = {r["file"]: r for r in world.read_labels(labels_csv)}
    ids = store.ids()
    return {int(i): rows[p.rsplit("/", 1)[-1]] for i, p in zip(ids, store.paths(ids))}


def collect(store, labels, **kw) -> list[dict]:
    tables: list[pa.Table] = []
    tag_store(store, labels, emit=tables.append, progress=False, **kw)
    return pa.concat_tables(tables).to_pylist()


@pytest.fixture(scope="module")
def truth(shapes_store) -> dict[int, dict]:
    return truth_by_id(Store.open(shapes_store), shapes_store.parent / "images" / "labels.csv")


def single_object_ids(truth, column: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, r in truth.items():
        if ";" not in r[column]:
            out.setdefault(r[column], []).append(i)
    return out


def test_zero_examples_equal_zero_shot_tags_exactly(shapes_store, tmp_path):
    header_only = tmp_path / "examples.csv"
    header_only.write_text("label,id_or_path\n")
    for mode in ("single", "multi"):
        plain = collect(shapes_store, SHAPES, mode=mode, top_k=3)
        assert collect(shapes_store, SHAPES, mode=mode, top_k=3, examples=[]) == plain
        assert collect(shapes_store, SHAPES, mode=mode, top_k=3, examples=header_only) == plain


def test_teach_without_examples_keeps_the_label_set_weights(shapes_clip):
    enc = Encoder(shapes_clip, device="cpu")
    ls = LabelSet.build(enc, SHAPES, ["a photo of a {}."])
    for mode in ("single", "multi"):
        taught = teach(ls, np.zeros((0, enc.dim)), np.zeros(0), mode)
        w, b = taught.weights(mode)
        assert np.array_equal(w, ls.weights(mode)[0]) and b == ls.weights(mode)[1]
        assert taught.offsets(mode) is None and taught.fit is None


def palette_accuracy(ls, vectors, truth_labels, ids_by_label, shots, draws=6) -> float:
    """Mean top-1 on the images not used as examples, over `draws` random draws of `shots` per label."""
    labels = ls.labels
    accs = []
    for d in range(draws):
        rng = np.random.default_rng(100 * shots + d)
        chosen = [int(x) for lab in labels for x in rng.choice(ids_by_label[lab], shots, replace=False)]
        taught = teach(ls, vectors[chosen], np.array([labels.index(truth_labels[i]) for i in chosen]))
        w, _ = taught.weights("single")
        off = taught.offsets("single")
        rest = np.setdiff1d(np.array(sorted(truth_labels)), chosen)
        pred = (vectors[rest] @ w + (0 if off is None else off)).argmax(axis=1)
        accs.append(np.mean([labels[p] == truth_labels[i] for p, i in zip(pred, rest)]))
    return float(np.mean(accs))


def test_shot_curve_improves_on_the_attribute_no_caption_names(shapes_store, shapes_clip, truth):
    """'warm'/'cool' never occur in a caption: the prompts alone are at chance, examples teach it."""
    st = Store.open(shapes_store)
    enc = Encoder(shapes_clip, device="cpu")
    ls = LabelSet.build(enc, ["warm", "cool"], [PALETTE_TEMPLATE])
    by_label = single_object_ids(truth, "palette")
    ids = np.array(sorted(i for v in by_label.values() for i in v))
    vectors = np.zeros((max(truth) + 1, st.dim), np.float32)
    vectors[ids] = st.vectors(ids)
    truth_labels = {int(i): truth[int(i)]["palette"] for i in ids}
    zero = palette_accuracy(ls, vectors, truth_labels, by_label, 0, draws=1)
    curve = [palette_accuracy(ls, vectors, truth_labels, by_label, k) for k in (1, 4, 16)]
    assert zero < 0.65  # chance: the model never read these words
    assert curve[2] > curve[0] + 0.15 and curve[2] >= curve[1] - 0.02
    assert curve[2] >= 0.85


def test_examples_by_path_and_by_id_teach_the_same(shapes_store, truth, tmp_path):
    by_label = single_object_ids(truth, "palette")
    st = Store.open(shapes_store)
    pairs = [(lab, i) for lab in ("warm", "cool") for i in by_label[lab][:4]]
    csv_path = tmp_path / "ex.csv"
    csv_path.write_text("label,id_or_path\n" + "".join(f"{lab},{st.paths([i])[0]}\n" for lab, i in pairs))
    kw = {"template": PALETTE_TEMPLATE, "top_k": 2}
    by_id = collect(shapes_store, ["warm", "cool"], examples=pairs, **kw)
    by_path = collect(shapes_store, ["warm", "cool"], examples=csv_path, **kw)
    assert [r["label"] for r in by_id] == [r["label"] for r in by_path]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(by_id, by_path)) < 0.05  # stored fp16 vs fresh


def test_multi_label_examples_choose_thresholds(shapes_store, truth):
    by_label = single_object_ids(truth, "shape")
    pairs = [(s, i) for s in ("circle", "star") for i in by_label[s][:6]]
    summary = tag_store(shapes_store, ["circle", "star"], mode="multi", examples=pairs, save_as=None,
                        progress=False)
    assert summary.classifier["examples"] == {"circle": 6, "star": 6} and summary.classifier["cv_folds"] >= 2
    rows = {r["id"]: r["labels"]
            for r in collect(shapes_store, ["circle", "star"], mode="multi", examples=pairs)}
    circles, stars = by_label["circle"], by_label["star"]
    assert np.mean(["circle" in rows[i] and "star" not in rows[i] for i in circles]) >= 0.8
    assert np.mean(["star" in rows[i] and "circle" not in rows[i] for i in stars]) >= 0.8


def cli_err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_examples_get_one_line_errors_before_any_work(shapes_store, truth, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(shapes_store, store)
    by_label = single_object_ids(truth, "shape")
    c, s = by_label["circle"][0], by_label["square"][0]

    def run(rows: str, labels="circle,square", *extra) -> str:
        ex = tmp_path / "ex.csv"
        ex.write_text(rows)
        return cli_err(capsys, ["classify", str(store), "--labels", labels, "--examples", str(ex),
                                "--save-as", "t", "--no-progress", *extra])

    assert ("unknown id 99999" in run(f"circle,{c}\nsquare,99999\n")
            and "line 2" in run(f"circle,{c}\nsquare,99999\n"))
    assert "'square' has no examples" in run(f"circle,{c}\n")
    assert "does not exist" in run(f"circle,{c}\nsquare,{tmp_path / 'nope.png'}\n")
    assert "one class only" in run(f"circle,{c}\n", "circle")
    assert "every example has it" in run(f"circle,{c}\n", "circle", "--mode", "multi")
    assert "not one of the labels" in run(f"circle,{c}\nstar,{s}\n")
    assert "labelled both" in run(f"circle,{c}\nsquare,{c}\n")
    assert "expected 'label,id_or_path'" in run(f"circle,{c},x\n")
    assert "examples file" in cli_err(capsys, ["classify", str(store), "--labels", "a,b", "--examples",
                                               str(tmp_path / "missing.csv")])
    assert "--suggest" in cli_err(capsys, ["classify", str(store), "--labels", "a,b", "--suggest", "-1"])
    assert Store.open(store).tag_sets() == []  # nothing was saved


def make_store(root, shapes_clip, count: int, seed: int):
    from indexer.job import index_collection

    world.write_collection(root / "a", count=count, seed=seed)
    index_collection([str(root / "a")], root / "store", model=shapes_clip, progress=False, workers=0)
    return root / "store"


def test_saved_tagger_tags_only_new_items_after_incremental_index(shapes_clip, tmp_path, capsys):
    store = make_store(tmp_path, shapes_clip, 40, seed=5)
    st = Store.open(store)
    tr = truth_by_id(st, tmp_path / "a" / "labels.csv")
    ex = tmp_path / "ex.csv"
    firsts = {}
    for i, r in sorted(tr.items()):
        if ";" not in r["palette"] and len(firsts.setdefault(r["palette"], [])) < 3:
            firsts[r["palette"]].append(i)
    ex.write_text("".join(f"{lab},{i}\n" for lab, ids in firsts.items() for i in ids))
    assert main(["classify", str(store), "--labels", "warm,cool", "--template", PALETTE_TEMPLATE,
                 "--examples", str(ex), "--save-as", "palette", "--no-progress"]) == 0
    assert "taught by 6 examples" in capsys.readouterr().out
    before = Store.open(store).tag_table("palette")
    assert before.num_rows == 40
    # mark the stored rows: a refresh that recomputed them would overwrite the mark
    marked = before.set_column(1, "palette", pa.array(["mark"] * 40))
    with StoreWriter(store) as w:
        w.write_tags("palette", marked)
    world.write_collection(tmp_path / "b", count=12, seed=6)
    assert main(["index", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(store), "--model", shapes_clip,
                 "--no-progress", "--workers", "0"]) == 0
    assert "tag set 'palette': tagged 12 new images" in capsys.readouterr().out
    after = Store.open(store)
    table = after.tag_table("palette").to_pylist()
    assert len(table) == 52 and [r["id"] for r in table] == sorted(after.ids().tolist())
    old, new = table[:40], table[40:]
    assert all(r["palette"] == "mark" for r in old)
    assert all(r["palette"] in ("warm", "cool") for r in new)
    # the new rows are what the saved tagger says for those images
    paths = after.paths([r["id"] for r in new])
    assert main(["classify-image", *paths, "--tagger", f"{store}:palette", "--json"]) == 0
    import json

    via_image = json.loads(capsys.readouterr().out)
    assert [r[0]["label"] for r in via_image] == [r["palette"] for r in new]
    assert max(abs(r[0]["score"] - t["palette_score"]) for r, t in zip(via_image, new)) < 0.05
    assert main(["index", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(store), "--model", shapes_clip,
                 "--no-progress", "--workers", "0"]) == 0
    assert "tag set" not in capsys.readouterr().out  # nothing new: nothing rewritten


def test_suggestions_are_uncertain_distinct_and_not_examples(shapes_store, truth):
    by_label = single_object_ids(truth, "palette")
    pairs = [(lab, i) for lab in ("warm", "cool") for i in by_label[lab][:2]]
    summary = tag_store(shapes_store, ["warm", "cool"], template=PALETTE_TEMPLATE, examples=pairs, suggest=8,
                        progress=False)
    sugg = summary.suggestions
    ids = [s["id"] for s in sugg]
    assert len(ids) == 8 == len(set(ids)) and not set(ids) & {i for _, i in pairs}
    rows = collect(shapes_store, ["warm", "cool"], template=PALETTE_TEMPLATE, examples=pairs, top_k=2)
    margins = sorted(r["scores"][0] - r["scores"][1] for r in rows if r["id"] not in {i for _, i in pairs})
    assert max(s["margin"] for s in sugg) <= margins[20 * 8 - 1] + 1e-6  # from the least certain 160
    assert [s["margin"] for s in sugg] == sorted(s["margin"] for s in sugg)


def test_api_classify_teaches_by_stored_examples_and_suggests(shapes_store, truth, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pixdex.server.app import create_app

    store = tmp_path / "store"
    shutil.copytree(shapes_store, store)
    client = TestClient(create_app(store), base_url="http://127.0.0.1")
    by_label = single_object_ids(truth, "palette")
    examples = [{"label": lab, "id": i} for lab in ("warm", "cool") for i in by_label[lab][:8]]
    shown = by_label["warm"][8:20] + by_label["cool"][8:20]
    body = {"ids": shown, "labels": ["warm", "cool"], "template": PALETTE_TEMPLATE}
    zero = client.post("/api/classify", json=body).json()["results"]
    out = client.post("/api/classify", json={**body, "examples": examples, "suggest": 4}).json()
    assert out["classifier"]["examples"] == {"warm": 8, "cool": 8}
    right = [r["labels"][0]["label"] == truth[r["id"]]["palette"] for r in out["results"]]
    right0 = [r["labels"][0]["label"] == truth[r["id"]]["palette"] for r in zero]
    assert np.mean(right) >= 0.8 and np.mean(right) > np.mean(right0)
    assert (len(out["suggestions"]) == 4
            and not {s["id"] for s in out["suggestions"]} & {e["id"] for e in examples})
    # the CLI's own checks, one line each, nothing scored
    bad = client.post("/api/classify", json={**body, "examples": [{"label": "warm", "id": 10**9}]})
    assert bad.status_code in (400, 404, 422) and "unknown id" in bad.json()["error"]
    bad = client.post("/api/classify", json={**body, "examples": examples[:8]})
    assert bad.status_code == 400 and "'cool' has no examples" in bad.json()["error"]
    bad = client.post("/api/classify", json={**body, "examples": [{"label": "warm", "path": "/etc/passwd"}]})
    assert bad.status_code in (400, 422) and "stored ids only" in bad.json()["error"]


def test_multi_label_tagger_saved_and_refreshed_like_a_full_run(shapes_clip, tmp_path, capsys):
    from classify.taggers import refresh_tag_sets

    store = make_store(tmp_path, shapes_clip, 30, seed=8)
    tr = truth_by_id(Store.open(store), tmp_path / "a" / "labels.csv")
    pairs = [(s, i) for i, r in sorted(tr.items()) for s in r["shape"].split(";") if s in ("circle", "star")]
    summary = tag_store(store, ["circle", "star"], mode="multi", examples=pairs, save_as="has",
                        progress=False)
    assert summary.classifier is not None and Store.open(store).tagger("has")["mode"] == "multi"
    world.write_collection(tmp_path / "b", count=10, seed=9)
    from indexer.job import index_collection

    index_collection([str(tmp_path / "a"), str(tmp_path / "b")], store, model=shapes_clip, progress=False,
                     workers=0)
    done = refresh_tag_sets(store)
    assert [(d.name, d.tagged) for d in done] == [("has", 10)]
    stored = {r["id"]: (r["has"], r["has_score"]) for r in Store.open(store).tag_table("has").to_pylist()}
    full = {r["id"]: (r["labels"], r["scores"])
            for r in collect(store, ["circle", "star"], mode="multi", examples=pairs)}
    assert set(stored) == set(full)
    for i, (labels, scores) in full.items():  # a full run now tags every item as the saved tagger did
        assert stored[i][0] == labels and np.allclose(stored[i][1], scores, atol=1e-5)


def test_siglip_store_zero_examples_exact_and_taught_fits_its_examples(tmp_path, shapes_dir):
    """SigLIP scores with a sigmoid and its own logit bias: the taught classifier keeps both."""
    from models import small_siglip_store

    model, store = small_siglip_store(tmp_path, shapes_dir, 12)
    ids = Store.open(store).ids().tolist()
    labels = ["circle", "square"]
    for mode in ("single", "multi"):
        assert (collect(store, labels, mode=mode, top_k=2, examples=[])
                == collect(store, labels, mode=mode, top_k=2))
    pairs = [(labels[k % 2], i) for k, i in enumerate(ids)]  # arbitrary labels: can it fit them?
    rows = {r["id"]: r for r in collect(store, labels, top_k=2, examples=pairs, save_as="fit")}
    assert np.mean([rows[i]["label"] == lab for lab, i in pairs]) >= 0.75
    assert all(0 < s < 1 for r in rows.values() for s in r["scores"])  # sigmoid scores, not a softmax pair
    rec = Store.open(store).tagger("fit")
    assert rec["scoring"]["family"] == "siglip" and rec["scoring"]["logit_bias"] == pytest.approx(-1.5)
    multi = {r["id"]: r for r in collect(store, labels, mode="multi", examples=pairs)}
    assert np.mean([lab in multi[i]["labels"] for lab, i in pairs]) >= 0.75


def test_prompts_that_say_nothing_give_way_to_a_plain_probe():
    """Label words the embeddings do not show, and the prompts' favourite is the rarest label: with 16
    examples each the classifier drops the text (record: prior 'none') and stops tagging nearly everything
    with the prompts' guess, so it is right more often than zero-shot. With fewer than 10 examples the
    default prior-centred fit stands (cross-validation that small cannot overrule it)."""
    rng = np.random.default_rng(0)
    dim, n = 64, 4000
    mean = unit(rng.standard_normal(dim))
    y = rng.choice(4, n, p=[0.1, 0.3, 0.3, 0.3])
    x = unit(mean + 0.5 * unit(rng.standard_normal((n, dim))))  # no label signal at all
    text = unit(0.2 * rng.standard_normal((4, dim)) + mean)
    text[0] = unit(text[0] + 0.3 * mean)  # the prompts favour label 0
    ls = LabelSet(["a", "b", "c", "d"], text.astype(np.float32), Scoring("clip", 100.0), ["{}"])
    ex = np.concatenate([rng.choice(np.flatnonzero(y == c), 16, replace=False) for c in range(4)])
    rest = np.setdiff1d(np.arange(n), ex)
    zero_shot = (x[rest] @ text.T).argmax(axis=1)
    assert (zero_shot == 0).mean() > 0.6
    taught = teach(ls, x[ex].astype(np.float32), y[ex])
    w, _ = taught.weights("single")
    pred = (x[rest] @ w + taught.offsets("single")).argmax(axis=1)
    assert taught.info()["prior"] == "none"
    assert (pred == 0).mean() < 0.5
    assert (pred == y[rest]).mean() > (zero_shot == y[rest]).mean() + 0.05
    few = teach(ls, x[ex[::8]].astype(np.float32), y[ex[::8]])
    assert few.info()["prior"] == "text" and few.info()["strength"] == 1.0
