"""`pixdex search`: rank a store's images for text, image, stored-item and mixed queries."""

from __future__ import annotations

import re
import sys

from indexer.errors import PixdexError
from indexer.params import COSINE, DEDUP, K, new_file_arg, store_arg
from pixdex.cli.common import add_model_args, print_json

QUERY_HELP = """\
query syntax (one argument = one query; a lone + or - between arguments joins them into a mix):
  "a red circle"                     free text
  ./photo.jpg  https://x/y.png       an image file or URL (image:PATH forces it, text:WORDS forces text)
  id:123   like:/abs/path.jpg        more like a stored item (by id or stored path)
  "2:golden retriever" + ./pool.jpg - "grass"
                                     weighted mix: weight:term, + adds, - subtracts
filter syntax (--where): width >= 256 AND path GLOB '*.png' OR shape IN ('circle', 'star')
  = != < <= > >= AND OR NOT ( ) IN (...) LIKE 'a%' ILIKE GLOB '*x*' IS [NOT] NULL  NEAR(lat, lon, km)
photos: taken >= '2024-06-01' AND camera_model LIKE 'Pixel%'   (columns taken, taken_offset, camera_make,
  camera_model, lens, gps_lat, gps_lon, orientation; --near 48.8584,2.2945,5; --sort -taken: newest first)
the whole query and filter grammar: docs/search.md
"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "search", help="search a store with text, images, stored items or weighted mixes",
        description="Rank the images in STORE for each query. Scores are cosine similarities.",
        epilog=QUERY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", metavar="STORE", type=store_arg, help="store directory made by pixdex index")
    p.add_argument("queries", nargs="*", metavar="QUERY", help="query (text, image path/URL, id:N, mixes)")
    p.add_argument("-k", "--top", dest="k", type=K.arg(), default=None,
                   help="results per query (default 10; with --threshold: all above it)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an image query (repeatable)")
    p.add_argument("--like", action="append", default=[], metavar="ID|PATH",
                   help="more like this stored item, itself left out (repeatable)")
    p.add_argument("--where", metavar="EXPR",
                   help="metadata filter, e.g. \"width >= 256 AND shape = 'circle'\"")
    p.add_argument("--near", metavar="LAT,LON,KM", help="only photos taken within KM km of LAT,LON (GPS)")
    p.add_argument("--sort", metavar="COLUMN", help="order the results (the top k, or all above --threshold) "
                   "by a column: taken (oldest first), -taken (newest first), or any metadata column")
    p.add_argument("--path-glob", metavar="GLOB", help="only paths matching this glob (* crosses /)")
    p.add_argument("--path-prefix", metavar="PREFIX", help="only paths starting with PREFIX")
    p.add_argument("--threshold", type=COSINE.arg(), metavar="X", help="only results with cosine >= X")
    p.add_argument("--dedup", type=DEDUP.arg(), metavar="X",
                   help="drop results within cosine X of a better one")
    p.add_argument("--template", metavar="T", help="text template, e.g. 'a photo of {}' (default: none)")
    add_model_args(p, None)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print, per query, a list of {rank,id,path,score}")
    out.add_argument("--paths-only", action="store_true", help="print one path per line (for piping)")
    p.add_argument("--html", type=new_file_arg, metavar="OUT.html",
                   help="also write a page of thumbnails per query")
    # `--sort -taken`: let argparse read a dash-word after the options as a value, as it reads -5
    p._negative_number_matcher = re.compile(r"^-(\d+|\d*\.\d+|[A-Za-z_][A-Za-z0-9_.]*)$")
    p.set_defaults(func=run_search)


QUICK_START_QUERIES = 16  # up to this many queries, open the query models for a fast start, not fast runs


def run_search(args) -> int:
    from indexer.onnx_cache import prefer_quick_start
    from search.query import Query, Term, parse_query, queries_from_args

    where = None
    if args.where or args.near:  # a bad filter is refused before any work starts
        from search.filters import all_of, near_filter

        where = all_of(args.where, near_filter(args.near) if args.near else None)
    texts = queries_from_args(args.queries)
    queries = [parse_query(t) for t in texts]
    queries += [Query((Term("image", path),), label=path) for path in args.image]
    if not queries and not args.like:
        raise PixdexError("no query: give QUERY text, --image PATH or --like ID")
    k = args.k if args.k is not None else (None if args.threshold is not None else 10)
    if len(queries) <= QUICK_START_QUERIES:
        prefer_quick_start()
        if args.model is None:  # an explicit model runs transformers (search.encoding.QueryEncoder)
            encode_files_ahead(args.store, queries)

    from search.results import format_table, records, write_html
    from search.searcher import Searcher

    searcher = Searcher(args.store, model=args.model, device=args.device)
    common = {"k": k, "threshold": args.threshold, "where": where, "path_glob": args.path_glob,
              "path_prefix": args.path_prefix, "dedup": args.dedup, "sort": args.sort}
    results = searcher.search(queries, template=args.template, **common) if queries else []
    labels = [q.label for q in queries]
    for like in args.like:
        item = int(like) if like.isdigit() else like
        results.append(searcher.more_like(item, **common))
        labels.append(f"like {like}")
    if searcher.count == 0:
        print(f"pixdex search: store {args.store} is empty", file=sys.stderr)
    if args.json:
        print_json(records(results))
    elif args.paths_only:
        for hits in results:
            for h in hits:
                print(h.path)
    else:
        print(format_table(labels, results))
    if args.html:
        out = write_html(args.html, labels, results, searcher.store)
        print(f"pixdex search: wrote {out}", file=sys.stderr)
    return 0


def encode_files_ahead(store: str, queries: list) -> None:
    """Image files among a few queries start encoding now, on a background thread, while this process
    imports and opens the store (indexer.image_onnx.encode_files_ahead): 0.1 s of a cold query."""
    files = [t.value for q in queries for t in q.terms if t.kind == "image" and isinstance(t.value, str)]
    if not files:
        return
    from indexer.image_onnx import encode_files_ahead as start
    from indexer.store_format import recorded_fingerprint

    fingerprint = recorded_fingerprint(store)
    if fingerprint:
        start(fingerprint, files)
