"""`pixdex demo`: the whole system end to end, offline, on the shipped shapes-clip model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from indexer.params import COUNT, SEED

DEMO_MODEL = "shapes-clip"


def register(sub) -> None:
    p = sub.add_parser("demo",
                       help="generate a shapes collection, index it with shapes-clip, search and tag it",
                       description="Runs offline: writes a shapes-world collection into OUT/images, reports "
                       "shapes-clip's zero-shot accuracy, indexes it into OUT/store, runs searches (HTML "
                       "page), tags and evaluates the collection.")
    p.add_argument("out", nargs="?", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--count", type=COUNT.arg(), default=300, help="images to generate (default 300)")
    p.add_argument("--seed", type=SEED.arg(), default=2026, help="generator seed (default 2026)")
    p.set_defaults(func=run)


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(args) -> int:
    from pixdex.demo.world import write_collection

    out = Path(args.out)
    t0 = time.perf_counter()
    step(f"1. shapes world: {args.count} images (seed {args.seed}) -> {out / 'images'}")
    labels = write_collection(out / "images", count=args.count, seed=args.seed)
    print(f"wrote {labels}")

    step("2. shapes-clip zero-shot accuracy on this collection")
    zero_shot_report(labels)

    step(f"3. index -> {out / 'store'}")
    from indexer.job import index_collection

    summary = index_collection([str(out / "images")], out / "store", model=DEMO_MODEL,
                               progress=sys.stderr.isatty())
    print(summary.line())

    searches(out)
    tag_and_eval(out, labels)
    photos(out)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s. Browse the store: pixdex serve {out / 'store'}")
    return 0


def zero_shot_report(labels: Path, show: int = 5) -> None:
    """shapes-clip's colour and shape top-1 accuracy on the single-object images, plus a few predictions."""
    import numpy as np

    from classify.classifier import ZeroShotClassifier
    from pixdex.demo.world import COLORS, SHAPES, read_labels, row_objects

    rows = [r for r in read_labels(labels) if len(row_objects(r)) == 1]
    clf = ZeroShotClassifier(DEMO_MODEL)
    images = clf.embed_images([str(labels.parent / r["file"]) for r in rows])
    predictions = {}
    for column, names in (("color", COLORS), ("shape", SHAPES)):
        scores = clf.scoring.scores(images, clf.label_embeddings(list(names),
                                                                 "a photo of a {} shape." if column == "color"
                                                                 else "a photo of a {}."))
        predictions[column] = [names[i] for i in np.argmax(scores, axis=1)]
        hits = np.mean([p == r[column] for p, r in zip(predictions[column], rows)])
        print(f"  {column:<6} top-1 {hits:.3f} over {len(rows)} single-object images ({len(names)} classes)")
    for k, r in enumerate(rows[:show]):
        guess = f"{predictions['color'][k]} {predictions['shape'][k]}"
        print(f"  {r['file']:<18} truth {r['color'] + ' ' + r['shape']:<18} predicted {guess}")


DEMO_QUERIES = ["a red circle", "a blue square", "a small yellow star", '"2:green triangle" - "green"']


def searches(out: Path) -> None:
    """A few text and mixed queries plus one image query; a page of thumbnails per query."""
    from search.results import format_table, write_html
    from search.searcher import Searcher

    step("4. search (text, a weighted mix, an image)")
    searcher = Searcher(out / "store")
    first_image = min((out / "images").glob("*.png"))
    queries = DEMO_QUERIES + [str(first_image)]
    results = searcher.search(queries, k=8)
    print(format_table(queries, [hits[:3] for hits in results]))
    page = write_html(out / "search.html", queries, results, searcher.store, title="pixdex demo searches")
    print(f"thumbnails per query: {page}")


def tag_and_eval(out: Path, labels: Path) -> None:
    from pixdex.cli.classify import demo_tag_and_eval

    step("5. tag by shape from stored embeddings, evaluate against labels.csv")
    demo_tag_and_eval(out, labels)


def photos(out: Path) -> None:
    """A few photos with camera EXIF and copies of one: a date filter, sorting by time, a duplicate group."""
    from indexer.job import index_collection
    from pixdex.demo.photos import write_album
    from search.duplicates import find_duplicates
    from search.duplicates_html import format_report, write_duplicates_html
    from search.results import format_table
    from search.searcher import Searcher

    step(f"6. photos: capture time, camera and place from EXIF; duplicates -> {out / 'photos'}")
    write_album(out / "photos")
    store = out / "store"
    summary = index_collection([str(out / "images"), str(out / "photos")], store, model=DEMO_MODEL,
                               progress=sys.stderr.isatty())
    print(summary.line())
    where = "taken >= '2024-01-01' AND camera_model LIKE 'Pixel%'"
    print(f"pixdex search {store} \"a photo\" --where \"{where}\" --sort -taken")
    hits = Searcher(store).search("a photo", k=10, where=where, sort="-taken")
    print(format_table([""], [hits]))
    print(f"pixdex duplicates {store}")
    report = find_duplicates(store, progress=sys.stderr.isatty())
    print(format_report(report))
    page = write_duplicates_html(out / "duplicates.html", report, str(store))
    print(f"groups side by side: {page}")
