"""Generate the example notebooks from the cell sources below (so that reviews read plain Python).

    python notebooks/build.py            # rewrite notebooks/*.ipynb (no outputs)
    python notebooks/build.py --check    # exit 1 if a committed notebook differs from this file

Each notebook runs top to bottom offline (HF_HUB_OFFLINE=1) on the shapes world and the shipped
`shapes-clip` model, checks what it shows with `assert`, and writes its files under ./pixdex-nb-NN/.
tests/test_notebooks.py executes all of them.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str):
    return new_code_cell(textwrap.dedent(text).strip("\n"))


# Shared by the notebooks that show images: a grid of results captioned with their true labels.
GRID_HELPERS = '''
def objects(path):
    """The true objects of an image of the collection (from labels.csv)."""
    return truth[os.path.realpath(path)]


def is_a(path, color=None, shape=None):
    """True when the image holds an object of that colour and/or shape."""
    return any((color is None or o["color"] == color) and (shape is None or o["shape"] == shape)
               for o in objects(path))


def describe(path):
    return " + ".join(f"{o['color']} {o['shape']}" for o in objects(path))


def show(images, captions, title="", cols=8):
    """A grid of images (paths) with a caption under each."""
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, caption in zip(axes.flat, images, captions):
        with Image.open(path) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()
'''


# ---- 01 ---------------------------------------------------------------------------------------------
def text_to_image_search():
    return [
        md("""
        # Text-to-image search

        Build a store from a folder of images, then rank the images for text, for an image, for weighted
        mixes of both, and inside a filtered subset. Everything runs offline: the images come from the
        *shapes world* (procedurally drawn coloured shapes with exact labels) and the model is the shipped
        `shapes-clip`, a small CLIP trained on that world. With your own photos, swap in your folder and a
        real model (notebook 04 shows how).
        """),
        code("""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network needed

        import shutil
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        from PIL import Image

        from indexer import Store, index_collection
        from pixdex.demo import world
        from search import Searcher, write_html

        WORK = Path("pixdex-nb-01")  # everything this notebook writes
        shutil.rmtree(WORK, ignore_errors=True)
        IMAGES, STORE = WORK / "images", WORK / "shapes.pixdex"
        MODEL = "shapes-clip"
        """),
        md("""
        ## A collection with ground truth

        `write_collection` draws 200 scenes (one or two shapes each) as a mix of JPEG and PNG files and writes
        `labels.csv` with each image's colours and shapes. We only use the labels to *check* the results.
        """),
        code("""
        labels_csv = world.write_collection(IMAGES, count=200, seed=12)
        rows = world.read_labels(labels_csv)
        truth = {os.path.realpath(labels_csv.parent / r["file"]): world.row_objects(r) for r in rows}
        print(len(rows), "images, e.g.", rows[0]["file"], "->", rows[0]["caption"])
        assert len(truth) == 200
        """),
        code(GRID_HELPERS),
        md("""
        ## Index it

        `index_collection` decodes every image safely, embeds it with the model and writes the store: float16
        embedding shards, parquet metadata and a FAISS index (for 200 images `auto` picks exact search).
        Running it again only indexes new or changed files.
        """),
        code("""
        summary = index_collection([str(IMAGES)], STORE, model=MODEL, progress=False)
        print(summary.line())
        store = Store.open(STORE)
        print("model:", store.model["name"], "| dim", store.dim, "| index:", store.index_info["type"])
        print("metadata columns:", store.metadata().column_names)
        assert store.count == 200 and summary.failed == 0
        """),
        md("""
        ## Search by text

        A `Searcher` opens the store and loads the store's own model on the first text query. Each hit has a
        1-based `rank`, the store `id`, the `path` and the cosine `score`; `hit.metadata` has every stored column.

        Red circles are one of the colour-shape pairs `shapes-clip` **never saw in training**
        (`world.HELDOUT_COMBOS`), so finding them is true zero-shot composition of "red" and "circle".
        """),
        code("""
        searcher = Searcher(STORE)
        hits = searcher.search("a red circle", k=8)
        show([h.path for h in hits], [f"#{h.rank} {h.score:.2f}\\n{describe(h.path)}" for h in hits], '"a red circle"')

        n_true = sum(is_a(p, "red", "circle") for p in truth)
        print(f"{n_true} images hold a red circle; held out in training: {('red', 'circle') in world.HELDOUT_COMBOS}")
        assert n_true >= 3
        # shapes-clip: colour top-1 1.00, shape 0.94, held-out pairs 0.78 (README, model card)
        assert all(is_a(h.path, "red") for h in hits[:5]), [describe(h.path) for h in hits[:5]]
        assert is_a(hits[0].path, "red", "circle"), describe(hits[0].path)
        assert sum(is_a(h.path, "red", "circle") for h in hits[:5]) >= 4, [describe(h.path) for h in hits[:5]]
        """),
        md("""
        A list of queries is encoded in one batch and returns one list of hits per query. Precision is measured
        against the truth over the top `min(k, number of matching images)` results.
        """),
        code("""
        def precision(hits, color=None, shape=None):
            relevant = sum(is_a(p, color, shape) for p in truth)
            top = hits[: max(1, min(len(hits), relevant))]
            return sum(is_a(h.path, color, shape) for h in top) / len(top)


        queries = {"a blue square": ("blue", "square"), "an orange star": ("orange", "star"),
                   "something green": ("green", None), "a hexagon": (None, "hexagon")}
        results = searcher.search(list(queries), k=8)
        for (query, want), hits in zip(queries.items(), results):
            p = precision(hits, *want)
            show([h.path for h in hits], [f"{h.score:.2f} {describe(h.path)}" for h in hits],
                 f'"{query}"  precision {p:.2f}')
            if want[0]:  # colour: right every time
                assert precision(hits, want[0]) >= 0.6, (query, precision(hits, want[0]))
            assert p >= 0.6, (query, p)  # colour and shape together
        """),
        md("""
        ## Search by image

        An image query is a path, URL, PIL image or bytes. Here the query images are new scenes that are not in
        the store. The same path given to `search()` as a string is recognised as an image.
        """),
        code("""
        query_csv = world.write_collection(WORK / "queries", count=12, seed=99)
        query = next(r for r in world.read_labels(query_csv) if ";" not in r["shape"])
        query_path = query_csv.parent / query["file"]
        hits = searcher.search_image(query_path, k=8)
        show([query_path] + [h.path for h in hits],
             [f"query\\n{query['color']} {query['shape']}"] + [f"{h.score:.2f}\\n{describe(h.path)}" for h in hits],
             "search by image", cols=9)

        alike = [is_a(h.path, query["color"]) or is_a(h.path, shape=query["shape"]) for h in hits[:5]]
        assert sum(alike) >= 4, [describe(h.path) for h in hits[:5]]  # same colour or same shape
        assert [h.id for h in searcher.search(str(query_path), k=8)] == [h.id for h in hits]
        """),
        md("""
        `more_like` finds the neighbours of a stored item by id (or stored path), without re-encoding anything.
        """),
        code("""
        first = hits[0]
        like = searcher.more_like(first.id, k=6)
        show([first.path] + [h.path for h in like], ["item"] + [f"{h.score:.2f}\\n{describe(h.path)}" for h in like],
             f"more like id {first.id}", cols=7)
        assert first.id not in [h.id for h in like] and len(like) == 6
        """),
        md("""
        ## Mixing queries

        The query syntax mixes terms with `+` and `-` and weights like `"2:text"`: the query vector is the
        normalised weighted sum of the normalised term embeddings. Terms may be text, images (`./x.jpg`),
        stored items (`id:12`) or stored paths (`like:/photos/x.jpg`).

        * `"a red circle" - "circle"` keeps *red* and pushes circles down;
        * `"a blue square" - "blue" + "yellow"` swaps the colour: yellow squares;
        * `"2:a star" + <image>` looks for stars that also look like the query image.
        """),
        code("""
        plain = searcher.search("a red circle", k=8)
        minus = searcher.search('"a red circle" - "circle"', k=8)
        show([h.path for h in minus], [f"{h.score:.2f}\\n{describe(h.path)}" for h in minus], '"a red circle" - "circle"')
        assert sum(is_a(h.path, "red") for h in minus) >= 6

        swapped = searcher.search('"a blue square" - "blue" + "yellow"', k=8)
        show([h.path for h in swapped], [f"{h.score:.2f}\\n{describe(h.path)}" for h in swapped],
             '"a blue square" - "blue" + "yellow"')
        assert sum(is_a(h.path, "yellow") for h in swapped[:5]) >= 3

        weighted = searcher.search(f'"2:a star" + {query_path}', k=8)
        show([h.path for h in weighted], [f"{h.score:.2f}\\n{describe(h.path)}" for h in weighted],
             f'"2:a star" + image of a {query["color"]} {query["shape"]}')
        assert len(weighted) == 8
        """),
        md("""
        ## Filters

        `where=` takes a small SQL-like expression over the metadata columns (`id, path, bytes, mtime, width,
        height, sha256`, source columns and saved tags — see notebook 02); `path_glob=` and `path_prefix=`
        restrict by path. The filter restricts the index search itself, so you still get `k` matching results.
        """),
        code("""
        pngs = searcher.search("a star", k=8, path_glob="*.png")
        show([h.path for h in pngs], [f"{Path(h.path).name}\\n{describe(h.path)}" for h in pngs], '"a star", PNG files only')
        assert len(pngs) == 8 and all(h.path.endswith(".png") for h in pngs)

        median = int(np.median(store.metadata()["bytes"].to_numpy()))
        small = searcher.search("a star", k=8, where=f"bytes < {median} AND path LIKE '%.jpg'")
        assert len(small) == 8
        assert all(h["bytes"] < median and h.path.endswith(".jpg") for h in small)
        print([(Path(h.path).name, h["bytes"]) for h in small])
        """),
        md("""
        ## A shareable page

        `write_html` writes a self-contained page of thumbnails (what `pixdex search --html` writes).
        """),
        code("""
        page = write_html(WORK / "results.html", list(queries), results, store=searcher)
        print(page, page.stat().st_size, "bytes")
        assert page.read_text().count("<figure") == sum(len(h) for h in results)
        """),
    ]


# ---- 02 ---------------------------------------------------------------------------------------------
def bulk_zero_shot_tagging():
    return [
        md("""
        # Bulk zero-shot tagging

        Tag every image of a store against a label set, straight from the stored embeddings (no image is
        decoded again), measure the accuracy against ground truth with one prompt template and with the
        80-template CLIP ImageNet ensemble, look at the confusion matrix and at the mistakes, then save the
        tags into the store and filter searches by them.
        """),
        code("""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")

        import csv
        import shutil
        from collections import Counter
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        from PIL import Image

        from classify.classifier import ZeroShotClassifier
        from classify.evaluate import evaluate_store
        from classify.prompts import DEFAULT_TEMPLATE, ENSEMBLES
        from classify.tagging import tag_store
        from indexer import Store, index_collection
        from pixdex.demo import world
        from search import Searcher

        WORK = Path("pixdex-nb-02")
        shutil.rmtree(WORK, ignore_errors=True)
        IMAGES, STORE = WORK / "images", WORK / "shapes.pixdex"
        MODEL = "shapes-clip"

        labels_csv = world.write_collection(IMAGES, count=200, seed=5)
        truth = {os.path.realpath(labels_csv.parent / r["file"]): world.row_objects(r)
                 for r in world.read_labels(labels_csv)}
        summary = index_collection([str(IMAGES)], STORE, model=MODEL, progress=False)
        print(summary.line())
        assert Store.open(STORE).count == 200
        """),
        code(GRID_HELPERS),
        md("""
        ## Label sets and prompts

        A label is turned into text with a template (`"This is a photo of {}."` is the transformers pipeline's
        default). A prompt *ensemble* embeds each label with many templates and averages the normalised
        embeddings — the CLIP paper's trick, here `clip-imagenet-80`.
        """),
        code("""
        LABEL_SETS = {"shape": list(world.SHAPES), "color": list(world.COLORS)}
        PROMPTS = {"one template": dict(template=DEFAULT_TEMPLATE), "clip-imagenet-80": dict(ensemble="clip-imagenet-80")}
        print(LABEL_SETS)
        print(len(ENSEMBLES["clip-imagenet-80"]), "templates, e.g.", ENSEMBLES["clip-imagenet-80"][:3])
        """),
        md("""
        ## Accuracy: one template vs the ensemble

        `evaluate_store` classifies the truth's images from their stored embeddings (single-label, the
        pipeline's softmax scoring) and reports top-1/top-5 accuracy, per-class precision/recall and a confusion
        matrix. A two-object image counts as correct when the prediction is either of its objects.
        """),
        code("""
        reports = {}
        for column, labels in LABEL_SETS.items():
            for prompt, how in PROMPTS.items():
                out = WORK / "eval" / f"{column}-{prompt.replace(' ', '-')}"
                reports[column, prompt] = evaluate_store(STORE, labels_csv, column=column, labels=labels,
                                                         out_dir=out, **how)

        fig, ax = plt.subplots(figsize=(6, 3))
        x = np.arange(len(LABEL_SETS))
        for i, prompt in enumerate(PROMPTS):
            acc = [reports[c, prompt].top1 for c in LABEL_SETS]
            bars = ax.bar(x + (i - 0.5) * 0.38, acc, 0.38, label=prompt)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        chance = [1 / len(v) for v in LABEL_SETS.values()]
        ax.scatter(x, chance, marker="_", s=900, color="k", label="chance")
        ax.set_xticks(x, [f"{c} ({len(v)} labels)" for c, v in LABEL_SETS.items()])
        ax.set_ylabel("top-1 accuracy"); ax.set_ylim(0, 1.05); ax.legend(fontsize=8, loc="lower right")
        plt.show()

        for (column, prompt), r in reports.items():
            print(f"{column:6s} {prompt:17s} top-1 {r.top1:.3f}  top-5 {r.top5:.3f}  ({r.evaluated} images)")
            assert r.evaluated == 200 and r.missing == 0
            assert r.top1 >= 1.5 / len(r.labels), (column, prompt, r.top1)  # well above chance
        """),
        md("""
        ## Confusion matrix

        Rows are the true class, columns the predicted one (single-object images only), normalised per row.
        """),
        code("""
        report = reports["shape", "clip-imagenet-80"]
        cm = np.array(report.confusion)
        norm = cm / cm.sum(axis=1, keepdims=True).clip(1)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(cm)):
            for j in range(len(cm)):
                ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(cm)), report.labels, rotation=45, ha="right")
        ax.set_yticks(range(len(cm)), report.labels)
        ax.set_xlabel("predicted"); ax.set_ylabel("true"); fig.colorbar(im, label="share of the true class")
        ax.set_title(f"shape, clip-imagenet-80: top-1 {report.top1:.2f}")
        plt.show()
        print(report.text())

        assert cm.sum() == report.evaluated - report.multi_label_rows
        assert np.trace(norm) / len(cm) > 1.5 / len(cm), "the diagonal beats chance"
        """),
        md("""
        ## Mistakes, per class

        `predictions.csv` (written next to `metrics.json` in the evaluation folder) has the prediction of every
        image. Here are up to four mistakes for each true shape.
        """),
        code("""
        with open(report.files["predictions"], newline="") as fh:
            preds = list(csv.DictReader(fh))
        wrong = [p for p in preds if p["predicted"] not in p["truth"].split(";")]
        print(f"{len(wrong)} mistakes out of {len(preds)}")
        assert len(wrong) == round((1 - report.top1) * report.evaluated)

        for label in report.labels:
            mine = [p for p in wrong if p["truth"] == label][:4]
            if mine:
                show([p["path"] for p in mine], [f"{describe(p['path'])}\\n-> {p['predicted']}" for p in mine],
                     f"true {label}: {sum(p['truth'] == label for p in wrong)} mistakes", cols=4)
        """),
        md("""
        ## The pipeline-compatible classifier

        For a few images at a time, `ZeroShotClassifier` is a drop-in for transformers'
        `pipeline("zero-shot-image-classification")`: same call, same output. It agrees with the stored-embedding
        predictions above (both use the pipeline's default template).
        """),
        code("""
        clf = ZeroShotClassifier(MODEL)
        one = reports["shape", "one template"]
        with open(one.files["predictions"], newline="") as fh:
            sample = list(csv.DictReader(fh))[:16]
        out = clf([p["path"] for p in sample], candidate_labels=LABEL_SETS["shape"])
        print(out[0][:3])
        agree = np.mean([o[0]["label"] == p["predicted"] for o, p in zip(out, sample)])
        show([p["path"] for p in sample[:8]], [f"{o[0]['label']} {o[0]['score']:.2f}" for o in out[:8]],
             "ZeroShotClassifier")
        assert agree >= 0.9, agree
        assert all(abs(sum(d["score"] for d in o) - 1) < 1e-4 for o in out)  # softmax over the labels
        """),
        md("""
        ## Tag the whole store and save the tags

        `tag_store` streams the stored embeddings block by block (so it scales to millions of images) and can
        write a parquet/CSV/JSONL file and/or save the tags into the store as columns `NAME` and `NAME_score`.
        (`pixdex classify STORE --labels ... --save-as NAME` does the same from the command line.)
        """),
        code("""
        for column, labels in LABEL_SETS.items():
            s = tag_store(STORE, labels, ensemble="clip-imagenet-80", save_as=column, progress=False)
            print(s.line())
            assert s.tagged == 200

        store = Store.open(STORE)
        meta = store.metadata()
        print(store.tag_sets(), meta.column_names)
        assert store.tag_sets() == ["color", "shape"]

        # the saved tags are exactly the evaluated predictions
        tags = dict(zip((os.path.realpath(p) for p in meta["path"].to_pylist()), meta["shape"].to_pylist()))
        saved_acc = np.mean([tags[p] in {o["shape"] for o in objs} for p, objs in truth.items()])
        print(f"accuracy of the saved shape tags: {saved_acc:.3f}")
        assert abs(saved_acc - reports["shape", "clip-imagenet-80"].top1) < 1e-9

        counts = Counter(meta["shape"].to_pylist())
        true_counts = Counter(o["shape"] for objs in truth.values() for o in objs[:1])
        fig, ax = plt.subplots(figsize=(6, 2.8))
        x = np.arange(len(world.SHAPES))
        ax.bar(x - 0.2, [true_counts[s] for s in world.SHAPES], 0.4, label="truth (first object)")
        ax.bar(x + 0.2, [counts[s] for s in world.SHAPES], 0.4, label="saved tag")
        ax.set_xticks(x, world.SHAPES); ax.legend(fontsize=8); plt.show()
        """),
        md("""
        ## Filter by tags

        Saved tags are ordinary metadata columns, so `where=` can use them — alone or with a query.
        """),
        code("""
        searcher = Searcher(STORE)
        hits = searcher.search("a shape", k=8, where="shape = 'star' AND color = 'orange'")
        show([h.path for h in hits], [f"{h['shape']}/{h['color']} {h['shape_score']:.2f}\\ntrue: {describe(h.path)}"
                                      for h in hits], "where shape = 'star' AND color = 'orange'")
        assert hits and all(h["shape"] == "star" and h["color"] == "orange" for h in hits)
        assert np.mean([is_a(h.path, "orange") for h in hits]) >= 0.6

        # the more confident half of the circle tags: a score cut-off trades recall for precision
        cut = float(np.median([sc for t, sc in zip(meta["shape"].to_pylist(), meta["shape_score"].to_pylist())
                               if t == "circle"]))
        sure = searcher.search("a circle", k=None, threshold=-1.0, where=f"shape = 'circle' AND shape_score >= {cut}")
        print(f"{len(sure)} images tagged circle with a score >= {cut:.3f}")
        assert len(sure) >= 3 and all(h["shape_score"] >= cut for h in sure)
        tagged = searcher.search("a circle", k=None, threshold=-1.0, where="shape = 'circle'")
        print(f"precision of circle tags: all {np.mean([is_a(h.path, shape='circle') for h in tagged]):.2f}, "
              f"confident half {np.mean([is_a(h.path, shape='circle') for h in sure]):.2f}")
        """),
    ]


# ---- 03 ---------------------------------------------------------------------------------------------
def index_tuning():
    return [
        md("""
        # Index tuning: flat, HNSW, IVF and IVF-PQ

        A store's FAISS index only proposes candidates; pixdex re-scores them exactly with the stored
        embeddings. So the index decides *recall* (did the true neighbours make it into the candidates?),
        *latency* and *memory*. This notebook writes 50,000 synthetic 512-d embeddings (the size of CLIP
        ViT-B/32's) into a store, shows how `auto` chooses an index, and compares the four index types on
        recall@10 vs latency vs memory. No model is needed.
        """),
        code("""
        import shutil
        import time
        from pathlib import Path

        import faiss
        import matplotlib.pyplot as plt
        import numpy as np

        from indexer import ModelInfo, Store, StoreWriter
        from indexer.faiss_index import (TARGET_RECALL, apply_search_params, build_index, bytes_per_vector,
                                         choose_index, exact_top_k, noisy_queries, recall_at_k, tune_params)
        from indexer.index_build import update_index
        from search import Searcher

        faiss.omp_set_num_threads(1)  # per-core timings: comparable, and stable on a busy machine

        WORK = Path("pixdex-nb-03")
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir()
        N, DIM = 50_000, 512
        """),
        md("""
        ## Synthetic embeddings in a store

        Real image embeddings are clumpy and have a low intrinsic dimension: similar images sit close together on
        a thin manifold. The generator draws points around 100 centres in a 32-d latent space and maps them into
        512-d with a random projection plus noise (uniform random vectors would make every index look bad,
        because nothing is near anything). `StoreWriter` appends them with minimal metadata rows, and
        `update_index` builds the store's index the way `pixdex index` does.
        """),
        code("""
        def embeddings(n, dim, latent=32, centres=100, spread=0.5, noise=0.15, seed=0):
            rng = np.random.default_rng(seed)
            c = rng.normal(size=(centres, latent))
            z = c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, latent))
            x = z @ (rng.normal(size=(latent, dim)) / np.sqrt(latent)) + noise * rng.normal(size=(n, dim))
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


        STORE = WORK / "synthetic.pixdex"
        model = ModelInfo(name="synthetic", family="clip", dim=DIM, fingerprint="synthetic-512", model_type="none")
        with StoreWriter(STORE, model, shard_rows=16384) as writer:
            rows = [{"path": f"synthetic/{i:06d}.jpg", "bytes": 0, "mtime": 0.0, "width": 0, "height": 0, "sha256": ""}
                    for i in range(N)]
            writer.append(rows, embeddings(N, DIM))
            writer.commit()
            record = update_index(writer, "auto")
            writer.commit()

        store = Store.open(STORE)
        ids, vectors = store.embeddings()  # float32 copies of the stored float16 embeddings
        print(store.count, "vectors;", "auto chose:", record["type"], "-", record["reason"])
        assert store.count == N and record["type"] == choose_index(N, DIM).type
        """),
        md("""
        ## How `auto` chooses

        `choose_index(n, dim, max_memory)` is the rule behind `pixdex index --index auto --max-index-memory 4G`:
        """),
        code("""
        print(choose_index.__doc__)

        MB, GB = 2**20, 2**30
        scenarios = [(10_000, None), (N, None), (500_000, None), (5_000_000, None), (500_000, 64 * MB),
                     (50_000_000, 16 * GB)]
        print(f"{'vectors':>12}  {'budget':>8}  {'type':6}  {'factory':16}  {'~MB':>8}  reason")
        for n, budget in scenarios:
            spec = choose_index(n, DIM, budget)
            need = n * bytes_per_vector(spec.type, DIM, spec.pq_m)
            print(f"{n:>12,}  {(f'{budget / MB:,.0f}M' if budget else '-'):>8}  {spec.type:6}  {spec.factory:16}"
                  f"  {need / MB:>8,.0f}  {spec.reason}")
            if budget:
                assert need <= budget, "the choice fits the budget"

        # the whole map: which type auto picks for a collection size and a memory budget
        sizes, budgets = np.logspace(3, 9, 61), np.logspace(6, 12, 61)
        kinds = ["flat", "hnsw", "ivf", "ivfpq"]
        grid = np.array([[kinds.index(choose_index(int(n), DIM, b).type) for n in sizes] for b in budgets])
        fig, ax = plt.subplots(figsize=(7, 4))
        cmap = plt.matplotlib.colors.ListedColormap([f"C{i}" for i in range(len(kinds))])
        ax.pcolormesh(sizes, budgets, grid, cmap=cmap, vmin=-0.5, vmax=len(kinds) - 0.5, shading="nearest")
        ax.set_xscale("log"); ax.set_yscale("log")
        ax.set_xlabel("vectors"); ax.set_ylabel("memory budget (bytes)"); ax.set_title(f"auto's choice, dim {DIM}")
        here = ax.scatter([N], [N * bytes_per_vector("flat", DIM)], color="k", marker="x", label="this store, flat")
        ax.legend(handles=[plt.matplotlib.patches.Patch(color=f"C{i}", label=k) for i, k in enumerate(kinds)] + [here],
                  loc="upper left", fontsize=8)
        plt.show()
        assert set(np.unique(grid)) == set(range(len(kinds)))  # every type is the right answer somewhere

        assert choose_index(10_000, DIM).type == "flat"
        assert choose_index(500_000, DIM).type == "hnsw"
        assert choose_index(5_000_000, DIM).type == "ivf"
        assert choose_index(500_000, DIM, 64 * MB).type == "ivfpq"
        """),
        md("""
        ## Build the four index types on the same vectors

        For the comparison the indexes are built in memory with the functions the indexer uses (IVF k-means and
        PQ codebooks are trained on a 10k sample to keep the notebook quick; the indexer trains on up to 200k).
        IVF-PQ is what `auto` picks when full vectors do not fit the memory budget — here 2 MB, which leaves
        32 bytes of PQ code per vector instead of 2 KB of float32.
        """),
        code("""
        BUDGET = 2 * MB
        specs = {kind: choose_index(N, DIM, index_type=kind) for kind in ("flat", "hnsw", "ivf")}
        specs["ivfpq"] = choose_index(N, DIM, max_memory=BUDGET)
        assert specs["ivfpq"].type == "ivfpq"

        built = {}
        for kind, spec in specs.items():
            t0 = time.perf_counter()
            index = build_index(vectors, ids, spec, train_sample=10_000)
            seconds = time.perf_counter() - t0
            size = len(faiss.serialize_index(index))
            built[kind] = dict(index=index, spec=spec, build_s=seconds, bytes=size)
            print(f"{kind:6s} {spec.factory:16s} built in {seconds:5.1f} s, {size / MB:6.1f} MB "
                  f"({size / N:,.0f} bytes/vector)")

        assert built["ivfpq"]["bytes"] < built["flat"]["bytes"] / 10
        assert built["hnsw"]["bytes"] > built["flat"]["bytes"]  # full vectors plus graph links
        """),
        md("""
        ## Recall@10 vs latency

        Queries are stored vectors with a little noise (near-duplicate lookups, the query style the indexer tunes
        for); the truth is exact search. Each approximate index is swept over its search-time knob: `efSearch`
        for HNSW (the graph search's beam width), `nprobe` for IVF (how many of the clusters are visited).
        Latency is the median per query, one query at a time, on one core of this machine.

        IVF-PQ ranks by approximate (compressed) distances, so its own top 10 is rough. The `Searcher` fetches
        more candidates from a PQ index (`4k + 40`) and re-scores them with the exact stored embeddings: the
        dashed line shows what that recovers.
        """),
        code("""
        rng = np.random.default_rng(1)
        queries = noisy_queries(vectors[rng.choice(N, 200, replace=False)], seed=1)
        assert (ids == np.arange(N)).all()  # store ids = row positions here, which keeps the code short
        truth = exact_top_k(vectors, queries, 10)


        def timed(search):  # search(q) for every query -> (results, median ms per query)
            search(queries[0])  # warm up
            found, ms = [], []
            for q in queries:
                t0 = time.perf_counter()
                found.append(search(q))
                ms.append((time.perf_counter() - t0) * 1000)
            return np.array(found), float(np.median(ms))


        def rescored(index, q, depth=80, k=10):  # what the Searcher does: re-score `depth` PQ candidates exactly
            cand = index.search(q[None, :], depth)[1][0]
            cand = cand[cand >= 0]
            return cand[np.argsort(-(vectors[cand] @ q), kind="stable")[:k]]


        KNOBS = {"flat": ("-", [None]), "hnsw": ("efSearch", [16, 32, 64, 128, 256]),
                 "ivf": ("nprobe", [1, 2, 4, 8, 16, 32]), "ivfpq": ("nprobe", [1, 2, 4, 8, 16, 32])}
        curves, reranked = {}, []
        for kind, (knob, values) in KNOBS.items():
            index, points = built[kind]["index"], []
            for v in values:
                if v is not None:
                    apply_search_params(index, {knob: v})
                found, ms = timed(lambda q: index.search(q[None, :], 10)[1][0])
                points.append((v, recall_at_k(found, truth), ms))
                if kind == "ivfpq":
                    found, ms = timed(lambda q: rescored(index, q))
                    reranked.append((v, recall_at_k(found, truth), ms))
            curves[kind] = points
            print(f"{kind:6s}", "  ".join(f"{v}: {r:.3f} @ {ms:.2f} ms" for v, r, ms in points))
        print("ivfpq + exact re-scoring of 80 candidates:", "  ".join(f"{v}: {r:.3f}" for v, r, _ in reranked))

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
        for i, (kind, points) in enumerate(curves.items()):
            ax1.plot([p[2] for p in points], [p[1] for p in points], "o-", color=f"C{i}",
                     label=f"{kind} ({built[kind]['spec'].factory})")
            for v, r, ms in points:
                if v is not None:
                    ax1.annotate(str(v), (ms, r), fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax1.plot([p[2] for p in reranked], [p[1] for p in reranked], "o--", color="C3",
                 label="ivfpq + exact re-scoring (Searcher)")
        ax1.axhline(TARGET_RECALL, color="grey", ls=":", label=f"target recall {TARGET_RECALL}")
        ax1.set_xscale("log"); ax1.set_xlabel("ms per query (log)"); ax1.set_ylabel("recall@10")
        ax1.set_title("recall@10 vs latency (point labels: efSearch / nprobe)"); ax1.legend(fontsize=8)
        kinds = list(built)
        bars = ax2.bar(kinds, [built[k]["bytes"] / MB for k in kinds], color=[f"C{i}" for i in range(len(kinds))])
        ax2.bar_label(bars, labels=[f"{built[k]['bytes'] / MB:.1f} MB\\nbuilt in {built[k]['build_s']:.1f} s"
                                    for k in kinds], fontsize=8)
        ax2.set_ylabel("index size (MB)"); ax2.set_title("memory and build time"); ax2.margins(y=0.3)
        fig.tight_layout(); plt.show()

        assert curves["flat"][0][1] == 1.0  # exact search
        for kind in ("hnsw", "ivf"):
            assert max(p[1] for p in curves[kind]) >= TARGET_RECALL, kind
            assert curves[kind][-1][1] >= curves[kind][0][1], "a wider search finds more"
        # PQ codes are lossy: at the same nprobe, IVF-PQ does not beat IVF over full vectors ...
        assert all(pq[1] <= fl[1] + 0.01 for pq, fl in zip(curves["ivfpq"], curves["ivf"]))
        # ... and exact re-scoring of a deeper candidate list recovers much of the loss
        assert reranked[-1][1] >= curves["ivfpq"][-1][1] + 0.2
        """),
        md("""
        ## What the indexer records

        After a build the indexer picks the smallest `efSearch`/`nprobe` whose recall@10 reaches the target
        (0.95), or the best setting it found, and records both in the store's manifest (`pixdex info STORE`).
        Where IVF-PQ's recall is too low for you, give the index more memory (`--max-index-memory`: a longer
        PQ code) or ask for `--index ivf` / `--index hnsw` explicitly.
        """),
        code("""
        for kind in ("hnsw", "ivf", "ivfpq"):
            tuned = tune_params(built[kind]["index"], queries, truth, built[kind]["spec"])
            print(f"{kind:6s} {tuned.params}  recall@10 {tuned.recall_at_10:.3f}")
            if kind == "ivfpq":
                assert tuned.recall_at_10 >= max(p[1] for p in curves[kind]) - 0.01
            else:
                assert tuned.recall_at_10 >= TARGET_RECALL
        """),
        md("""
        ## And through the store

        Searching the store itself (flat, as `auto` chose for 50k vectors) returns exactly the brute-force top 10.
        """),
        code("""
        searcher = Searcher(STORE)
        results = searcher.search_embedding(queries[:20], k=10)
        for hits, t in zip(results, truth[:20].tolist()):
            assert {h.id for h in hits} == set(t)  # the same ten (the order may differ only between near-ties)
        print("store search == exact search for", len(results), "queries")
        """),
    ]


# ---- 04 ---------------------------------------------------------------------------------------------
def using_your_own_model():
    return [
        md("""
        # Using your own model, and the store with `datasets` and plain FAISS

        pixdex works with any CLIP-style checkpoint that transformers loads: `openai/clip-vit-base-patch32` (the
        default), larger CLIPs, SigLIP and SigLIP 2, or a folder you fine-tuned and saved with
        `save_pretrained`. The first part shows the calls for a machine with the Hugging Face hub (they only
        run when `ONLINE = True`); everything else runs offline with the shipped `shapes-clip`.

        The second part opens a store without pixdex: the metadata is parquet, the embeddings `.npy` and the
        index a FAISS file, so `datasets` and `faiss` read them directly.
        """),
        code("""
        import os

        ONLINE = False  # set True on a machine that can reach the Hugging Face hub
        if not ONLINE:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")

        import shutil
        from pathlib import Path

        import faiss
        import numpy as np

        from classify.classifier import ZeroShotClassifier
        from indexer import Encoder, Store, index_collection, resolve_model
        from pixdex.demo import world
        from search import Searcher

        WORK = Path("pixdex-nb-04")
        shutil.rmtree(WORK, ignore_errors=True)
        labels_csv = world.write_collection(WORK / "images", count=120, seed=4)
        """),
        md("""
        ## A model from the hub

        Pass a hub id wherever a model is expected. The `Encoder` wraps the model and its processor (SigLIP's
        text is padded to 64 tokens, as it was trained) and records the model's fingerprint in the store, so a
        store is never searched with the wrong model. On the command line:
        `pixdex index photos/ --out photos.pixdex --model google/siglip-base-patch16-224`.
        """),
        code("""
        if ONLINE:
            clip = Encoder("openai/clip-vit-base-patch32")
            print(clip.info)  # name, family 'clip', dim 512, fingerprint
            index_collection([str(WORK / "images")], WORK / "clip.pixdex", model="openai/clip-vit-base-patch32")
            print(Searcher(WORK / "clip.pixdex").search("a red circle", k=5))

            siglip = Encoder("google/siglip-base-patch16-224")
            print(siglip.info, siglip.logit_bias)  # family 'siglip': sigmoid scores, one per label
            clf = ZeroShotClassifier("google/siglip-base-patch16-224")
            print(clf(str(next((WORK / "images").iterdir())), candidate_labels=["a circle", "a square"]))

            # a local copy (or your fine-tuned model): any folder that from_pretrained can load
            from transformers import AutoModel, AutoProcessor
            AutoModel.from_pretrained("openai/clip-vit-base-patch32").save_pretrained(WORK / "my-clip")
            AutoProcessor.from_pretrained("openai/clip-vit-base-patch32").save_pretrained(WORK / "my-clip")
            print(Encoder(str(WORK / "my-clip")).info.fingerprint == clip.info.fingerprint)
        else:
            print("offline: the hub cells are skipped (set ONLINE = True to run them)")
        """),
        md("""
        ## The same calls offline, with `shapes-clip`

        A short name like `shapes-clip` resolves to a local folder (registered by the pixdex package); a plain
        path works the same way. The folder is an ordinary transformers checkpoint: the transformers pipeline
        loads it too, and pixdex's `ZeroShotClassifier` gives the same answers.
        """),
        code("""
        folder = resolve_model("shapes-clip")
        print(folder, sorted(os.listdir(folder)))
        enc = Encoder("shapes-clip")
        print(enc.info)
        text = enc.encode_texts(["a red circle", "a blue square"])
        assert text.shape == (2, enc.info.dim) and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)

        from transformers import pipeline

        pipe = pipeline("zero-shot-image-classification", model=folder)
        clf = ZeroShotClassifier("shapes-clip")
        images = sorted(str(p) for p in (WORK / "images").iterdir() if p.suffix != ".csv")[:6]
        theirs = pipe(images, candidate_labels=list(world.SHAPES))
        ours = clf(images, candidate_labels=list(world.SHAPES))
        for a, b in zip(theirs, ours):
            assert [d["label"] for d in a] == [d["label"] for d in b]
            assert np.allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)
        print("pipeline and ZeroShotClassifier agree:", [b[0]["label"] for b in ours])
        """),
        md("""
        ## Index with it

        `index_collection` accepts a model name or an `Encoder` you already loaded.
        """),
        code("""
        STORE = WORK / "shapes.pixdex"
        summary = index_collection([str(WORK / "images")], STORE, model=enc, progress=False)
        store = Store.open(STORE)
        print(summary.line(), "|", store.model)
        assert store.count == 120 and store.model["fingerprint"] == enc.info.fingerprint
        searcher = Searcher(STORE)
        hits = searcher.search("a red circle", k=10)

        import matplotlib.pyplot as plt
        from PIL import Image

        fig, axes = plt.subplots(1, 5, figsize=(10, 2.3))
        for ax, h in zip(axes, hits):
            ax.imshow(Image.open(h.path)); ax.set_title(f"#{h.rank} {h.score:.2f}", fontsize=9); ax.axis("off")
        fig.suptitle('"a red circle" with shapes-clip, offline'); plt.show()
        """),
        md("""
        ## The store as a Hugging Face dataset

        Each shard's metadata is a parquet file listed in `manifest.json`, so `load_dataset("parquet")` reads
        them (`datasets.Dataset(store.metadata())` works too, and includes saved tags). The embeddings are
        float16 `.npy` shards; `store.embeddings()` returns them by id. With an `embedding` column the dataset
        gets its own FAISS index, and its nearest examples are pixdex's results.
        """),
        code("""
        from datasets import load_dataset

        shards = [str(STORE / s["metadata"]) for s in store.manifest["shards"]]
        ds = load_dataset("parquet", data_files=shards, split="train", cache_dir=str(WORK / "hf-cache"))
        ds = ds.sort("id")
        ids, emb = store.embeddings()
        assert list(ds["id"]) == ids.tolist()
        ds = ds.add_column("embedding", [row for row in emb])
        print(ds)

        ds.add_faiss_index(column="embedding", metric_type=faiss.METRIC_INNER_PRODUCT)
        query = enc.encode_texts(["a red circle"])[0]
        scores, nearest = ds.get_nearest_examples("embedding", query, k=10)
        print(list(zip(nearest["id"], np.round(scores, 3))))
        assert list(nearest["id"]) == [h.id for h in hits]
        assert np.allclose(scores, [h.score for h in hits], atol=1e-4)
        """),
        md("""
        ## The store with plain FAISS

        The index file named in the manifest is a standard FAISS index whose ids are the store ids (inner product
        over L2-normalised vectors = cosine).
        """),
        code("""
        index = faiss.read_index(str(STORE / store.index_info["file"]))
        print(type(index).__name__, index.ntotal, "vectors;", store.index_info["type"], store.index_info["factory"])
        D, I = index.search(query[None, :], 10)
        print(I[0].tolist())
        assert I[0].tolist() == [h.id for h in hits]

        assert store.paths(I[0]) == [h.path for h in hits]
        """),
    ]


# ---- 05 ---------------------------------------------------------------------------------------------
def teach_by_example():
    return [
        md("""
        # Teach a tag by example

        Zero-shot tags are only as good as the model's reading of the label words. Here the labels are
        *warm* and *cool* (red/orange/yellow/pink against green/cyan/blue/purple): no caption the shipped
        `shapes-clip` model was trained on uses these words, so its prompts are at chance. A handful of
        labelled examples, by stored id, teach it. The classifier starts from the zero-shot one (the label
        text embeddings are its prior) and moves only as far as the examples justify, so where the prompts
        already work (shapes) a few examples do no harm. Then: accuracy versus number of examples, which
        images to label next, and a saved tagger that tags images added later.
        """),
        code("""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")

        import shutil
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        from PIL import Image

        from classify.fewshot import teach
        from classify.prompts import LabelSet
        from classify.tagging import tag_store
        from classify.taggers import classify_images, refresh_tag_sets
        from indexer import Encoder, Store, index_collection
        from pixdex.demo import world

        WORK = Path("pixdex-nb-05")
        shutil.rmtree(WORK, ignore_errors=True)
        IMAGES, STORE = WORK / "images", WORK / "shapes.pixdex"
        labels_csv = world.write_collection(IMAGES, count=400, seed=21)
        truth = {os.path.realpath(labels_csv.parent / r["file"]): world.row_objects(r)
                 for r in world.read_labels(labels_csv)}
        print(index_collection([str(IMAGES)], STORE, model="shapes-clip", progress=False).line())
        store = Store.open(STORE)
        ids = store.ids()
        paths = dict(zip(ids.tolist(), store.paths(ids)))
        # single-object images and their palette (warm/cool), from labels.csv
        palette = {i: world.PALETTE[truth[os.path.realpath(p)][0]["color"]] for i, p in paths.items()
                   if len(truth[os.path.realpath(p)]) == 1}
        print(len(palette), "single-object images:", {v: list(palette.values()).count(v) for v in ("warm", "cool")})
        """),
        code(GRID_HELPERS),
        md("""
        ## Zero-shot: the words mean nothing to the model
        """),
        code("""
        TEMPLATE = "a photo of a {} coloured shape."
        rows = []
        tag_store(STORE, ["warm", "cool"], template=TEMPLATE, emit=rows.append, progress=False)
        zero = {r["id"]: r["label"] for t in rows for r in t.to_pylist()}
        zero_acc = np.mean([zero[i] == v for i, v in palette.items()])
        print(f"zero-shot accuracy {zero_acc:.3f}")
        assert zero_acc < 0.65  # about chance
        """),
        md("""
        ## Eight examples of each, by stored id

        Examples are rows `label,id_or_path` (stored ids, or image files that are encoded on the fly). The same
        call with `--examples examples.csv` on the command line, or `"examples"` in `POST /api/classify`.
        """),
        code("""
        rng = np.random.default_rng(0)
        chosen = {lab: rng.choice([i for i, v in palette.items() if v == lab], 8, replace=False).tolist()
                  for lab in ("warm", "cool")}
        examples = WORK / "examples.csv"
        examples.write_text("label,id_or_path\\n" + "".join(f"{lab},{i}\\n" for lab, ids_ in chosen.items() for i in ids_))
        rows = []
        summary = tag_store(STORE, ["warm", "cool"], template=TEMPLATE, examples=examples, save_as="palette",
                            suggest=8, emit=rows.append, progress=False)
        print(summary.line())
        print(summary.classifier)
        taught = {r["id"]: r["label"] for t in rows for r in t.to_pylist()}
        used = {i for ids_ in chosen.values() for i in ids_}
        acc = np.mean([taught[i] == v for i, v in palette.items() if i not in used])
        print(f"accuracy on the other images: {acc:.3f} (zero-shot {zero_acc:.3f})")
        assert acc >= 0.85 and acc > zero_acc + 0.25
        """),
        md("""
        ## Accuracy versus number of examples

        `classify.fewshot.teach` works on embeddings directly: here 1 to 16 examples per label, five random
        draws each, on the palette (which the prompts cannot do) and on the shape (which they can).
        """),
        code("""
        enc = Encoder("shapes-clip", device="cpu")
        vectors = dict(zip(ids.tolist(), store.vectors(ids)))
        shape = {i: truth[os.path.realpath(paths[i])][0]["shape"] for i in palette}
        tasks = {"palette (warm/cool)": (["warm", "cool"], TEMPLATE, palette),
                 "shape (6 labels)": (list(world.SHAPES), "a photo of a {}.", shape)}
        SHOTS = [0, 1, 2, 4, 8, 16]
        curves = {}
        for name, (labels, template, answer) in tasks.items():
            ls = LabelSet.build(enc, labels, [template])
            curve = []
            for k in SHOTS:
                accs = []
                for draw in range(5 if k else 1):
                    r = np.random.default_rng(100 * k + draw)
                    ex = [int(i) for lab in labels for i in r.choice([i for i, v in answer.items() if v == lab], k, replace=False)]
                    head = teach(ls, np.array([vectors[i] for i in ex] or np.zeros((0, store.dim))),
                                 np.array([labels.index(answer[i]) for i in ex]))
                    w, _ = head.weights("single")
                    off = head.offsets("single")
                    rest = [i for i in answer if i not in set(ex)]
                    pred = (np.array([vectors[i] for i in rest]) @ w + (0 if off is None else off)).argmax(axis=1)
                    accs.append(np.mean([labels[p] == answer[i] for p, i in zip(pred, rest)]))
                curve.append(float(np.mean(accs)))
            curves[name] = curve
            print(name, [round(a, 3) for a in curve])
        plt.figure(figsize=(6, 3.5))
        for name, curve in curves.items():
            plt.plot(SHOTS, curve, marker="o", label=name)
        plt.xscale("symlog", linthresh=1)
        plt.xticks(SHOTS, [str(k) for k in SHOTS])
        plt.xlabel("examples per label")
        plt.ylabel("top-1 accuracy")
        plt.ylim(0.4, 1.0)
        plt.legend()
        plt.title("teaching by example (0 = zero-shot)")
        plt.tight_layout()
        plt.show()
        pal, shp = curves["palette (warm/cool)"], curves["shape (6 labels)"]
        assert pal[-1] > pal[0] + 0.3  # learnt what the words could not say
        assert min(shp) > shp[0] - 0.03  # and the examples did no harm where the prompts work
        """),
        md("""
        ## Which images to label next

        `suggest=N` (`--suggest N`) lists the images the classifier is least sure about, one from each region
        of the collection (k-means over the embeddings), so the next examples count.
        """),
        code("""
        sugg = summary.suggestions
        print([(s["id"], s["label"], round(s["margin"], 3)) for s in sugg])
        assert len(sugg) == 8 and not {s["id"] for s in sugg} & used
        show([s["path"] for s in sugg], [f"{s['label']} or {s['runner_up']}?" for s in sugg], "label these next")
        """),
        md("""
        ## A saved tagger keeps tagging

        `save_as` stored the tag set *and* the classifier in the store. Images added later are tagged by
        `pixdex index` (or `refresh_tag_sets`) — only the new ones — and `pixdex classify-image --tagger
        STORE:palette` applies it to any file.
        """),
        code("""
        world.write_collection(WORK / "more", count=20, seed=22)
        print(index_collection([str(IMAGES), str(WORK / "more")], STORE, model="shapes-clip", progress=False).line())
        for r in refresh_tag_sets(STORE):
            print(r.line())
        store = Store.open(STORE)
        print(store.tagger("palette")["method"], store.tagger("palette")["examples"])
        assert store.tag_table("palette").num_rows == store.count == 420
        new = sorted((WORK / "more").glob("shape_*"))[:3]
        for path, labels in zip(new, classify_images(f"{STORE}:palette", [str(p) for p in new])):
            print(path.name, labels)
        """),
    ]


NOTEBOOKS = {
    "01_text_to_image_search.ipynb": text_to_image_search,
    "02_bulk_zero_shot_tagging.ipynb": bulk_zero_shot_tagging,
    "03_index_tuning.ipynb": index_tuning,
    "04_using_your_own_model.ipynb": using_your_own_model,
    "05_teach_by_example.ipynb": teach_by_example,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook `name` with no outputs, a python3 kernelspec and stable cell ids."""
    nb = new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    stem = name.split("_")[0]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"nb{stem}-{i:02d}"
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that the committed notebooks are up to date")
    args = p.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote", path)
    if stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
