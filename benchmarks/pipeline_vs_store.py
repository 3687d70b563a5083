"""Classifying N images: transformers' pipeline vs pixdex's classifier vs tagging the stored embeddings.

Side by side in one run, on the same shapes-world images, labels and model:
  1. pipeline("zero-shot-image-classification")(paths, candidate_labels=...)   re-encodes every image
     and every prompt, one image per forward pass;
  2. classify.ZeroShotClassifier(paths, candidate_labels=...)   prompts embedded once, images batched;
  3. `pixdex classify STORE` (classify.tagging.tag_store)   no image encoded at all.
Prints the times, the speed-ups and how often the top labels agree.

    python benchmarks/pipeline_vs_store.py --images 200 --model shapes-clip
    python benchmarks/pipeline_vs_store.py --images 100 --model random:vit-b-32   # real ViT-B/32 size
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABELS = ["circle", "square", "triangle", "star", "hexagon", "cross"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--model", default="shapes-clip",
                    help="model name or folder, or random:ARCH (benchmarks/archs.py: vit-b-32, vit-l-14)")
    ap.add_argument("--labels", default=",".join(LABELS))
    args = ap.parse_args()

    import torch
    from transformers import pipeline

    from classify.classifier import ZeroShotClassifier
    from classify.tagging import tag_store
    from indexer.job import index_collection
    from indexer.models import resolve_model
    from pixdex.demo.world import write_collection

    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="pixdex-bench-"))
    if args.model.startswith("random:"):
        from archs import save_random

        model = str(save_random(args.model.split(":", 1)[1], work / "model"))
    else:
        model = resolve_model(args.model)
    write_collection(work / "images", count=args.images, seed=3)
    t0 = time.perf_counter()
    summary = index_collection([str(work / "images")], work / "store.pixdex", model=model, progress=False)
    index_s = time.perf_counter() - t0
    paths = sorted(str(p) for p in (work / "images").iterdir() if p.suffix in (".png", ".jpg"))

    pipe = pipeline("zero-shot-image-classification", model=model)
    pipe(paths[0], candidate_labels=labels)  # warm-up
    t0 = time.perf_counter()
    ref = pipe(paths, candidate_labels=labels)
    pipe_s = time.perf_counter() - t0

    clf = ZeroShotClassifier(model, device="cpu")
    clf(paths[0], candidate_labels=["warm-up"])
    t0 = time.perf_counter()
    ours = clf(paths, candidate_labels=labels)
    clf_s = time.perf_counter() - t0

    rows = []
    tag_store(work / "store.pixdex", labels, emit=lambda t: rows.extend(t.to_pylist()), progress=False)
    rows = []
    t0 = time.perf_counter()
    tag_store(work / "store.pixdex", labels, emit=lambda t: rows.extend(t.to_pylist()), progress=False)
    store_s = time.perf_counter() - t0

    top_ref = {p: r[0]["label"] for p, r in zip(paths, ref)}
    agree_clf = sum(r[0]["label"] == top_ref[p] for p, r in zip(paths, ours)) / len(paths)
    max_diff = max(abs(a["score"] - b["score"]) for r1, r2 in zip(ours, ref) for a, b in zip(r1, r2))
    agree_store = sum(r["label"] == top_ref.get(r["path"]) for r in rows) / len(rows)
    n = len(paths)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), load {os.getloadavg()[0]:.1f}; "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"model {args.model}, {n} images, {len(labels)} labels; indexing them once took {index_s:.1f} s "
          f"({summary.images_per_second:.0f} images/s)")
    print(f"transformers pipeline      {pipe_s:8.2f} s  {n / pipe_s:10.1f} images/s")
    print(f"ZeroShotClassifier         {clf_s:8.2f} s  {n / clf_s:10.1f} images/s  "
          f"{pipe_s / clf_s:7.1f}x faster; "
          f"top-1 agrees {agree_clf:.0%}, max score diff {max_diff:.1e}")
    print(f"pixdex classify (store)    {store_s:8.2f} s  {n / store_s:10.1f} images/s  "
          f"{pipe_s / store_s:7.1f}x faster; "
          f"top-1 agrees {agree_store:.0%}")


if __name__ == "__main__":
    main()
