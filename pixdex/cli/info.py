"""`pixdex info` and `pixdex repair`: describe a store, check it against its checksums, mend it."""

from __future__ import annotations

import sys

from indexer.params import device_arg, store_arg
from pixdex.cli.common import print_json


def register(sub) -> None:
    q = sub.add_parser("info", help="describe a store: size, model, index, errors")
    q.add_argument("store", metavar="STORE", type=store_arg)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--errors", action="store_true", help="list files that could not be indexed")
    q.add_argument("--check", action="store_true",
                   help="read every file of the store and compare it with the sha256 the manifest records "
                   "(rc 2 and one line per damaged file when any is)")
    q.set_defaults(func=run_info)

    r = sub.add_parser("repair", help="check a store and rebuild what is damaged from what is intact",
                       description="Verify every file of a store (checksums, shapes, ids) and rebuild what "
                       "can be rebuilt: the manifest from the shard files, lost embeddings from the image "
                       "files (only files whose content is unchanged), the FAISS index from the embeddings. "
                       "Reports each step; damaged files are moved to STORE/damaged/.")
    r.add_argument("store", metavar="STORE")
    r.add_argument("--model", default=None,
                   help="model to re-embed with (default: the store's model; needed when the manifest and "
                   "the model record are both lost)")
    r.add_argument("--device", type=device_arg, default="auto",
                   help="device for re-embedding (auto, cpu, cuda, mps)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print the report as one JSON object")
    r.set_defaults(func=run_repair)


def store_info(store) -> dict:
    """The facts `pixdex info --json` prints."""
    m = store.manifest
    idx = store.index_info
    return {
        "store": str(store.path),
        "count": store.count,
        "dim": store.dim,
        "model": m["model"]["name"],
        "model_family": m["model"]["family"],
        "model_fingerprint": m["model"]["fingerprint"],
        "dtype": m["dtype"],
        "metric": m["metric"],
        "shards": len(m["shards"]),
        "deleted": m["counts"]["deleted"],
        "errors": m["counts"]["errors"],
        "index": {"type": idx.get("type"), "factory": idx.get("factory"),
                  "recall_at_10": idx.get("recall_at_10"), "params": idx.get("params"),
                  "ntotal": idx.get("ntotal"), "current": store.index_is_current()},
        "tags": store.tag_sets(),
        "dropped_ids": sum(b - a for a, b in m.get("gaps") or []),
        "checksums": len(m.get("files") or {}),
        "created": m["created"],
        "updated": m["updated"],
    }


def run_info(args) -> int:
    from indexer.store import Store

    store = Store.open(args.store)
    store.check_probes()
    if args.check:
        return run_check(store)
    info = store_info(store)
    errors = store.errors().to_pylist() if args.errors else []
    if args.json:
        if args.errors:
            info["error_list"] = [{"path": e["path"], "reason": e["reason"]} for e in errors]
        print_json(info)
        return 0
    if args.errors:
        for e in errors:
            print(f"{e['path']}\t{e['reason']}")
        if not errors:
            print("no errors", file=sys.stderr)
        return 0
    idx = info["index"]
    print(f"store     {info['store']}\nitems     {info['count']} ({info['deleted']} removed rows, "
          f"{info['shards']} shards)\nmodel     {info['model']} ({info['model_family']}, dim {info['dim']}, "
          f"fingerprint {info['model_fingerprint']})\nindex     {idx['factory']} "
          f"recall@10={idx['recall_at_10']} "
          f"params={idx['params']}\nerrors    {info['errors']}\ntags      {', '.join(info['tags']) or '-'}\n"
          f"updated   {info['updated']}")
    return 0


def run_check(store) -> int:
    """`info --check`: every file read and compared with its recorded sha256; one line per damaged file."""
    from tqdm.auto import tqdm

    total = sum(r.get("bytes", 0) for r in (store.manifest.get("files") or {}).values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="checking", file=sys.stderr, leave=False,
              disable=None) as bar:
        problems = store.verify(full=True, progress=bar.update)
    for p in problems:
        print(f"pixdex info: error: {p}", file=sys.stderr)
    if problems:
        return 2
    files = len(store.manifest.get("files") or {})
    unrecorded = "" if files else (" (no checksums recorded yet: written by an older pixdex; "
                                   "`pixdex repair` adds them)")
    print(f"store {store.path} is healthy: {store.count} items, "
          f"{files} files match their checksums{unrecorded}")
    return 0


def run_repair(args) -> int:
    from indexer.repair import repair_store

    report = repair_store(args.store, model=args.model, device=args.device, progress=not args.no_progress)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.line())
    return 0
