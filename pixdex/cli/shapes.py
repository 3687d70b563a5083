"""`pixdex shapes DIR`: write a labelled shapes-world demo collection."""

from __future__ import annotations

import argparse
from pathlib import Path

from indexer.errors import PixdexError
from indexer.params import COUNT, SEED, Bound

IMAGE_SIDE = Bound(int, 16, 4096)
PROBABILITY = Bound(float, 0, 1)


def register(sub) -> None:
    p = sub.add_parser(
        "shapes",
        help="write a labelled demo collection of generated shape images",
        description=(
            "Write COUNT generated images (mixed JPEG and PNG) of coloured shapes plus labels.csv "
            "(file,color,shape,size,position,palette,background,caption) into DIR. "
            "The same seed gives identical files."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--count", type=COUNT.arg(), default=200, help="number of images (default: 200)")
    p.add_argument("--seed", type=SEED.arg(), default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=IMAGE_SIDE.arg(), default=128,
                   help="image side in pixels (default: 128)")
    p.add_argument("--two-object-prob", type=PROBABILITY.arg(), default=0.25,
                   help="fraction of scenes with two objects (default: 0.25)")
    p.add_argument("--exclude-heldout", action="store_true",
                   help="leave out the colour-shape pairs shapes-clip never saw in training")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pixdex.demo import world

    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise PixdexError(f"{out} exists and is not a folder")
    if (out / "labels.csv").exists() or (out.is_dir() and any(out.iterdir())):
        existing = sorted(p.name for p in out.iterdir())
        if any(not (n == "labels.csv" or n.startswith("shape_")) for n in existing):
            raise PixdexError(f"{out} is not empty and does not look like a shapes collection; "
                              "pick a new folder")
        for p in out.glob("shape_*"):  # rewriting a collection: drop the old images first
            p.unlink()
    try:
        labels = world.write_collection(
            out,
            count=args.count,
            seed=args.seed,
            image_size=args.image_size,
            two_object_prob=args.two_object_prob,
            exclude_combos=world.HELDOUT_COMBOS if args.exclude_heldout else None,
        )
    except OSError as exc:
        raise PixdexError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    rows = world.read_labels(labels)
    two = sum(1 for r in rows if ";" in r["color"])
    jpg = sum(1 for r in rows if r["file"].endswith(".jpg"))
    print(f"wrote {len(rows)} images ({jpg} JPEG, {len(rows) - jpg} PNG, {two} with two objects) "
          f"and {labels} (seed {args.seed})")
    return 0
