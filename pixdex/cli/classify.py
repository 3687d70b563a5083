"""`pixdex classify-image`, `pixdex classify` (bulk tagging of a store) and `pixdex eval`."""

from __future__ import annotations

import sys

from indexer.errors import PixdexError
from indexer.models import DEFAULT_MODEL as CLASSIFIER_DEFAULT_MODEL  # same default as pixdex index
from indexer.params import (
    BATCH_ROWS,
    SCORE_THRESHOLD,
    SUGGEST,
    TIMEOUT,
    TOP_K,
    device_arg,
    output_file_arg,
    output_folder_arg,
    store_arg,
)
from pixdex.cli.common import add_model_args, print_json


def register(sub) -> None:
    p = sub.add_parser("classify-image", help="zero-shot classify images (like the transformers pipeline)",
                       description="Score images against candidate labels exactly like transformers' "
                       "zero-shot-image-classification pipeline (same scores, same order).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image path, http(s) URL or base64 string")
    p.add_argument("--labels", default=None, help="comma-separated candidate labels, e.g. circle,square,star")
    p.add_argument("--tagger", default=None, metavar="STORE:NAME",
                   help="apply the tagger saved in STORE by `classify --save-as NAME` instead of --labels")
    p.add_argument("--template", default=None, help='hypothesis template (default "This is a photo of {}.")')
    p.add_argument("--top-k", type=TOP_K.arg(), default=None, help="only the K best labels per image")
    p.add_argument("--timeout", type=TIMEOUT.arg(), default=None,
                   help="seconds to wait for an image URL (default 10)")
    p.add_argument("--json", action="store_true", help="print the pipeline's exact output structure as JSON")
    add_model_args(p, CLASSIFIER_DEFAULT_MODEL)
    p.set_defaults(func=run_classify_image)

    q = sub.add_parser("classify", help="tag every image of a store from its stored embeddings",
                       description="Tag a whole store against labels without re-encoding an image: "
                       "single-label (top-k, the pipeline's scores) or multi-label (per-label thresholds). "
                       "Writes parquet/CSV/JSONL, tag columns in the store (--save-as), or TSV to stdout.")
    q.add_argument("store", metavar="STORE", type=store_arg)
    add_label_args(q)
    q.add_argument("--mode", choices=["single", "multi"], default="single",
                   help="single: top-k labels per image; multi: every label over its threshold")
    q.add_argument("--top-k", type=TOP_K.arg(), default=None,
                   help="labels per image (single mode, default 1); at most K labels (multi mode)")
    q.add_argument("--threshold", type=SCORE_THRESHOLD.arg(), default=None,
                   help="multi mode: default score threshold "
                   "(default 0.5; per-label thresholds: labels file)")
    q.add_argument("--background", default=None,
                   help='multi mode with CLIP-like models: the "none of these" label that each label must '
                   'beat (default "something")')
    q.add_argument("--out", "-o", type=output_file_arg, default=None, metavar="FILE",
                   help="write FILE.parquet, FILE.csv or FILE.jsonl")
    q.add_argument("--save-as", default=None, metavar="NAME",
                   help="store the tags in the store as columns NAME and NAME_score (search --where can "
                   "filter), with the classifier, so `pixdex index` tags images added later")
    q.add_argument("--examples", default=None, metavar="CSV",
                   help="teach the labels by example: rows label,id_or_path (stored ids or image files); "
                   "the classifier starts from the zero-shot one and moves as far as the examples justify")
    q.add_argument("--suggest", type=SUGGEST.arg(), default=0, metavar="N",
                   help="also list the N stored images whose labels would help most "
                   "(least certain, spread out)")
    q.add_argument("--batch-rows", type=BATCH_ROWS.arg(), default=4096,
                   help="embeddings per block (memory bound; default 4096)")
    q.add_argument("--model", default=None, help="model (default: the store's own)")
    q.add_argument("--device", type=device_arg, default="auto",
                   help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.add_argument("--json", action="store_true", help="print the closing summary as one JSON object")
    q.set_defaults(func=run_classify)

    e = sub.add_parser("eval", help="zero-shot accuracy of a store against ground-truth labels",
                       description="Top-1/top-5 accuracy, per-class precision/recall and a confusion-matrix "
                       "PNG, from stored embeddings. Truth: a CSV with a 'file' column (relative to the CSV) "
                       "and a label column, or a folder-per-class directory.")
    e.add_argument("store", metavar="STORE", type=store_arg)
    e.add_argument("--truth", required=True, help="labels.csv or a folder-per-class directory")
    e.add_argument("--column", default="shape", help="truth column holding the class (default shape)")
    e.add_argument("--labels", default=None, help="candidate labels (default: every value in the truth)")
    e.add_argument("--labels-file", default=None, help="candidate labels, one per line")
    add_template_args(e)
    e.add_argument("--out-dir", type=output_folder_arg, default=None,
                   help="write metrics.json, predictions.csv and confusion.png here")
    e.add_argument("--model", default=None, help="model (default: the store's own)")
    e.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=run_eval)


def add_label_args(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--labels", help="comma-separated labels, e.g. circle,square,star")
    g.add_argument("--labels-file", help="labels one per line (optional TAB + threshold for multi mode)")
    add_template_args(p)


def add_template_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--template", default=None, help='prompt template (default "This is a photo of {}.")')
    g.add_argument("--templates-file", default=None,
                   help="prompt templates, one per line, averaged per label")
    g.add_argument("--ensemble", default=None, help="named template ensemble: clip-imagenet-80")


def read_label_args(args) -> tuple[list[str] | None, dict[str, float]]:
    from classify.prompts import read_labels_file, split_labels

    if getattr(args, "labels_file", None):
        if getattr(args, "labels", None):
            raise PixdexError("give --labels or --labels-file, not both")
        return read_labels_file(args.labels_file)
    if args.labels is None:
        return None, {}
    labels = split_labels(args.labels)
    if not labels:
        raise PixdexError(f"--labels {args.labels!r} holds no label")
    return labels, {}


def read_template_args(args) -> dict:
    from classify.prompts import read_lines

    templates = read_lines(args.templates_file, "templates") if args.templates_file else None
    return {"template": args.template, "templates": templates, "ensemble": args.ensemble}


def run_classify_image(args) -> int:
    from classify.classifier import ZeroShotClassifier
    from classify.prompts import DEFAULT_TEMPLATE, check_labels, check_template, split_labels

    if (args.labels is None) == (args.tagger is None):
        raise PixdexError("give --labels or --tagger STORE:NAME (one of them)")
    if args.tagger is not None:
        results = run_saved_tagger(args)
    else:
        labels = split_labels(args.labels)
        if not labels:
            raise PixdexError(f"--labels {args.labels!r} holds no label")
        check_labels(labels, allow_duplicates=False)  # as `classify` and the HTTP API: before the model loads
        check_template(args.template or DEFAULT_TEMPLATE)
        clf = ZeroShotClassifier(args.model, device=args.device)
        results = clf(args.images if len(args.images) > 1 else args.images[0], candidate_labels=labels,
                      hypothesis_template=args.template or DEFAULT_TEMPLATE, top_k=args.top_k,
                      timeout=args.timeout)
    if args.json:
        print_json(results)
        return 0
    many = results if len(args.images) > 1 else [results]
    for image, res in zip(args.images, many):
        if len(args.images) > 1:
            print(image if len(image) < 200 else image[:60] + "...")
        for r in res:
            print(f"{r['score']:.4f}  {r['label']}")
    return 0


def run_saved_tagger(args) -> list:
    """classify-image --tagger: the saved tagger's labels for each image (one list, or one per image)."""
    from classify.taggers import classify_images

    if args.template is not None:
        raise PixdexError("--template does not apply to a saved tagger (it keeps its own prompts)")
    results = classify_images(args.tagger, args.images, top_k=args.top_k, device=args.device)
    return results if len(args.images) > 1 else results[0]


def run_classify(args) -> int:
    from classify.prompts import DEFAULT_BACKGROUND
    from classify.sinks import flatten_lists
    from classify.tagging import tag_store

    labels, thresholds = read_label_args(args)
    emit = None
    if args.out is None and args.save_as is None:  # neither file nor store: rows to stdout as TSV
        header: list[bool] = []

        def emit(table) -> None:
            table = flatten_lists(table)
            if not header:
                print("\t".join(table.column_names))
                header.append(True)
            for row in zip(*(table[c].to_pylist() for c in table.column_names)):
                print("\t".join("" if v is None else tsv_field(v) for v in row))

    summary = tag_store(
        args.store, labels, **read_template_args(args), mode=args.mode, top_k=args.top_k,
        threshold=args.threshold, thresholds=thresholds, background=args.background or DEFAULT_BACKGROUND,
        examples=args.examples, suggest=args.suggest,
        out=args.out, save_as=args.save_as, emit=emit, model=args.model, device=args.device,
        batch_rows=args.batch_rows, progress=not args.no_progress,
    )
    if args.json:
        print_json(summary.to_dict())
        return 0
    where = sys.stderr if emit is not None else sys.stdout
    print(summary.line(), file=where)
    if summary.suggestions:
        print(f"label these next ({len(summary.suggestions)} least certain, spread over the collection):",
              file=where)
        for s in summary.suggestions:
            other = f" / {s['runner_up']}" if s["runner_up"] else ""
            print(f"  {s['id']}\t{s['path']}\t{s['label']}{other}\tmargin {s['margin']:.3f}", file=where)
    return 0


def run_eval(args) -> int:
    from classify.evaluate import evaluate_store

    labels, _ = read_label_args(args)
    report = evaluate_store(args.store, args.truth, column=args.column, labels=labels,
                            **read_template_args(args), out_dir=args.out_dir, model=args.model,
                            device=args.device)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.text())
    return 0


def tsv_field(value) -> str:
    """A value as one TSV field (tabs and newlines in labels or paths become spaces)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def demo_tag_and_eval(out_dir, labels_csv) -> None:
    """The demo's tagging and evaluation step: tag OUT/store by shape (saved as `shape_pred`, written to
    OUT/tags.parquet) and evaluate shape and colour against labels.csv (OUT/eval-*/confusion.png)."""
    from pathlib import Path

    from classify.evaluate import evaluate_store
    from classify.tagging import tag_store
    from pixdex.demo.world import COLORS, SHAPES

    out_dir = Path(out_dir)
    store = out_dir / "store"
    summary = tag_store(store, list(SHAPES), out=out_dir / "tags.parquet", save_as="shape_pred", top_k=1,
                        progress=sys.stderr.isatty())
    print(summary.line())
    print(f"  filter on it: pixdex search {store} \"a shape\" --where \"shape_pred = '{SHAPES[0]}'\"")
    for column, labels in (("shape", SHAPES), ("color", COLORS)):
        report = evaluate_store(store, labels_csv, column=column, labels=list(labels),
                                out_dir=out_dir / f"eval-{column}")
        print(f"  eval {column:<6} top-1 {report.top1:.3f}  top-5 {report.top5:.3f}  "
              f"({report.evaluated} images; confusion matrix {report.files['confusion']})")
