"""`pixdex duplicates`: groups of exact and near-duplicate images, each with a suggested keeper."""

from __future__ import annotations

import sys

from indexer.params import (
    DEFAULT_DUP_THRESHOLD,
    DEFAULT_PIXEL_TOLERANCE,
    DUP_THRESHOLD,
    PIXEL_TOLERANCE,
    new_file_arg,
    store_arg,
)
from pixdex.cli.common import print_json


def register(sub) -> None:
    p = sub.add_parser(
        "duplicates",
        help="find exact copies and near-duplicates (resized, recompressed, cropped, rotated)",
        description="List groups of copies of one photo: exact copies (same bytes) and near-duplicates. "
        "Candidates come from the store's index (cosine >= --threshold); a pixel-level check then drops "
        "look-alikes that are different photos. Each group names a suggested keeper (largest resolution, "
        "then earliest capture time). Nothing is deleted.",
    )
    p.add_argument("store", metavar="STORE", type=store_arg, help="store directory made by pixdex index")
    p.add_argument(
        "--threshold",
        type=DUP_THRESHOLD.arg(),
        default=DEFAULT_DUP_THRESHOLD,
        metavar="X",
        help=f"cosine above which two images are candidates (default {DEFAULT_DUP_THRESHOLD})",
    )
    p.add_argument(
        "--tolerance",
        type=PIXEL_TOLERANCE.arg(),
        default=DEFAULT_PIXEL_TOLERANCE,
        metavar="T",
        help=f"pixel check: the largest difference (0-255) of a thumbnail cell still taken for the "
        f"same photo (default {DEFAULT_PIXEL_TOLERANCE})",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the groups and counts as JSON")
    out.add_argument(
        "--html",
        type=new_file_arg,
        metavar="OUT.html",
        help="write a page with the groups side by side (thumbnails inlined)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from search.duplicates import find_duplicates
    from search.duplicates_html import format_report, write_duplicates_html

    report = find_duplicates(
        args.store,
        threshold=args.threshold,
        tolerance=args.tolerance,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if args.json:
        print_json(report.to_dict())
    elif args.html:
        out = write_duplicates_html(args.html, report, str(args.store))
        print(report.line())
        print(f"pixdex duplicates: wrote {out}", file=sys.stderr)
    else:
        print(format_report(report))
    return 0
