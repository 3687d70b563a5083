"""`pixdex demo`: the whole system end to end, offline, on the shipped shapes-clip model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEMO_MODEL = "shapes-clip"


def register(sub) -> None:
    p = sub.add_parser("demo", help="generate a shapes collection, index it with shapes-clip, search and tag it",
                       description="Runs offline: writes a shapes-world collection into OUT/images, reports "
                       "shapes-clip's zero-shot accuracy, indexes it into OUT/store, runs searches (HTML page), "
                       "tags and evaluates the collection.")
    p.add_argument("out", nargs="?", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--count", type=int, default=300, help="images to generate (default 300)")
    p.add_argument("--seed", type=int, default=2026, help="generator seed (default 2026)")
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

    summary = index_collection([str(out / "images")], out / "store", model=DEMO_MODEL, progress=sys.stderr.isatty())
    print(summary.line())

    for extra in EXTRA_STEPS:
        extra(out, labels)
    print(f"\ndone in {time.perf_counter() - t0:.1f} s. Browse the store: pixdex serve {out / 'store'}")
    return 0


def zero_shot_report(labels: Path) -> None:
    """Colour and shape top-1 accuracy of shapes-clip on the collection, with a few example predictions."""
    from pixdex.demo.assets import shapes_clip_path
    from pixdex.demo.quality import collection_accuracy

    report = collection_accuracy(shapes_clip_path(), labels)
    for name, value in report["accuracy"].items():
        print(f"  {name:<14} top-1 {value:.3f}")
    for ex in report["examples"]:
        print(f"  {ex['file']:<18} truth {ex['truth']:<22} predicted {ex['predicted']:<22} ({ex['score']:.2f})")


# Later stages (search page, tagging, eval) append functions (out_dir, labels_csv) -> None here.
EXTRA_STEPS: list = []
