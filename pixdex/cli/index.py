"""`pixdex index`: embed image sources into a store."""

from __future__ import annotations

from dataclasses import asdict

from indexer.models import DEFAULT_MODEL
from indexer.params import (
    BATCH_SIZE,
    DEFAULT_MAX_PIXELS,
    GPUS_PER_WORKER,
    INDEX_TYPES,
    MAX_PIXELS,
    SHARD_ROWS,
    WORKERS,
)
from pixdex.cli.common import add_model_args, print_json, size_arg


def register(sub) -> None:
    p = sub.add_parser("index", help="embed image sources into a store (incremental, restartable)",
                       description="Embed images from folders, path lists or datasets into a store with a "
                       "FAISS index. Re-running encodes only new and changed files and removes deleted ones.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder, text file of paths, image file, dataset folder (save_to_disk), .parquet, "
                   "imagefolder:DIR, WebDataset .tar shard, or an fsspec URL (s3://..., file://...) "
                   "of any of these")
    p.add_argument("--out", "-o", required=True, metavar="STORE",
                   help="store directory (created if missing), "
                   "or a URL (s3://..., published when the job ends)")
    add_model_args(p, None, new_store_default=DEFAULT_MODEL)
    p.add_argument("--batch-size", type=BATCH_SIZE.arg(), default=64,
                   help="images per model forward pass (default 64)")
    p.add_argument("--workers", type=WORKERS.arg(), default=None,
                   help="local engine: decoding processes (default: cores-1 on CPU); ray engine: embedding "
                   "actors (default: one per GPU, or half the CPUs)")
    p.add_argument("--index", choices=INDEX_TYPES, default="auto",
                   help="FAISS index type (default auto); sharded: IVF-PQ built by parts in parallel and "
                   "merged on disk (sharded-parts: kept as parts, searched as one IndexShards)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local processes, or Ray Data (pip install 'pixdex[distributed]')")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--gpus-per-worker", type=GPUS_PER_WORKER.arg(), default=0.0, metavar="N",
                   help="ray engine: GPUs per embedding actor (0 = embed on CPU)")
    p.add_argument("--max-index-memory", type=size_arg, default=None, metavar="SIZE",
                   help="memory budget for the index, e.g. 4G")
    p.add_argument("--max-pixels", type=MAX_PIXELS.arg(), default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images with more pixels (decompression-bomb guard; 0 = no limit; "
                   f"default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--shard-size", type=SHARD_ROWS.arg(), default=4096, metavar="ROWS",
                   help="rows per embedding shard; each shard is one crash-safe commit (default 4096)")
    p.add_argument("--hidden", action="store_true", help="include hidden files and folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the closing summary as one JSON object")
    p.set_defaults(func=run_index)


def run_index(args) -> int:
    from indexer.sources import check_sources

    sources = check_sources(args.sources)  # fail on a typo before paying for torch and the model
    from indexer.job import index_collection

    summary = index_collection(
        sources, args.out, model=args.model, device=args.device, batch_size=args.batch_size,
        workers=args.workers, index=args.index, max_index_memory=args.max_index_memory,
        include_hidden=args.hidden, max_pixels=args.max_pixels or None, shard_rows=args.shard_size,
        progress=not args.no_progress, engine=args.engine, ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
    )
    refreshed = refresh_saved_tags(args.out)
    if args.json:
        print_json({**summary.to_dict(), "tag_sets": [asdict(r) for r in refreshed]})
    else:
        print(summary.line())
        for r in refreshed:
            print(r.line())
        idx = summary.index
        if idx.get("type"):
            print(f"index: {idx.get('factory')} ({idx.get('type')}), recall@10 {idx.get('recall_at_10')}, "
                  f"params {idx.get('params') or '-'}")
    return 0


def refresh_saved_tags(out: str) -> list:
    """Tag the new items of every tag set saved with its classifier (classify --save-as)."""
    from classify.taggers import refresh_tag_sets
    from indexer.store import Store, is_store

    if not is_store(out):  # a remote store: published as indexed; refresh it with a local copy
        return []
    store = Store.open(out)
    return refresh_tag_sets(store) if store.taggers() else []
