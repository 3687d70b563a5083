"""End-to-end indexing speed on CPU: `index_collection` vs the transformers processor+model loop.

Side by side in one process, over the same generated shapes-world files and the same model:
  1. pixdex   index_collection([folder], new_store, model=encoder): scan, decode (worker processes,
              JPEG draft), batch encode, write shards, build the FAISS index;
  2. docs     the transformers docs' loop, one image per call:
              image = Image.open(path); inputs = processor(images=image, return_tensors="pt");
              model.get_image_features(**inputs)
  3. batched  the same loop with batches of --batch-size images (the best a hand-written loop does).
Models: shapes-clip (when its weights are present) and the ViT-B/32 architecture (CLIPConfig
defaults, random weights: speed does not depend on weight values). Prints images/s and ratios.

    python benchmarks/index_cpu.py --images 200
    python benchmarks/index_cpu.py --images 200 --image-size 1024   # photo-sized JPEG/PNG files
    python benchmarks/index_cpu.py --images 200 --copies 0.25        # plus 50 byte-identical copies

With --copies F, that fraction of the files is copied again under other names (a folder of photos with
duplicates): pixdex encodes each content once, the loops encode every path.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def save_vit_b32(out: Path) -> Path:
    """A random-weight CLIP ViT-B/32 (CLIPConfig defaults) with the shapes tokenizer and a 224 processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pixdex.demo.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer(model_max_length=77)
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                                  "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    CLIPModel(cfg).save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(out)
    return out


def docs_loop(model_dir: str, paths: list[Path], batch_size: int) -> float:
    """Seconds for the transformers docs' processor + get_image_features loop over paths."""
    import torch
    from PIL import Image
    from transformers import AutoModelForZeroShotImageClassification, AutoProcessor

    model = AutoModelForZeroShotImageClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = [Image.open(p).convert("RGB") for p in paths[start : start + batch_size]]
            inputs = processor(images=images, return_tensors="pt")
            model.get_image_features(**inputs)
    return time.perf_counter() - t0


def pixdex_run(encoder, folder: Path, work: Path, batch_size: int,
               workers: int | None) -> tuple[float, int, int]:
    """Seconds for index_collection into a fresh store, the number of images stored and of images encoded."""
    from indexer.job import index_collection

    store = Path(tempfile.mkdtemp(dir=work)) / "s.pixdex"
    t0 = time.perf_counter()
    summary = index_collection([str(folder)], store, model=encoder, batch_size=batch_size, workers=workers,
                               progress=False, log=lambda m: None)
    return time.perf_counter() - t0, summary.count, summary.encoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=128, help="edge of the generated images (128 = demo)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="pixdex decoding processes (default: cores-1)")
    ap.add_argument("--models", default="shapes-clip,vit-b-32")
    ap.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is reported")
    ap.add_argument("--copies", type=float, default=0.0,
                    help="fraction of files copied again under other names")
    args = ap.parse_args()

    import torch

    from indexer.encoder import Encoder
    from indexer.models import resolve_model
    from pixdex.demo.world import write_collection

    work = Path(tempfile.mkdtemp(prefix="pixdex-index-bench-"))
    folder = work / "images"
    write_collection(folder, count=args.images, seed=1, image_size=args.image_size)
    originals = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    (folder / "copies").mkdir()
    for p in originals[: round(args.copies * len(originals))]:
        shutil.copy(p, folder / "copies" / p.name)
    paths = sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
    print(f"# {len(paths)} images of {args.image_size}px (JPEG+PNG), batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}, "
          f"best of {args.repeat}, {len(paths) - len(originals)} of them copies")
    print(f"{'model':<12} {'method':<28} {'seconds':>8} {'images/s':>9} {'pixdex speed-up':>16}")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "vit-b-32":
            model_dir = str(save_vit_b32(work / "vit-b-32"))
        else:
            model_dir = resolve_model(name)
            if not (Path(model_dir) / "config.json").is_file():
                print(f"{name:<12} (skipped: no weights at {model_dir})")
                continue
        encoder = Encoder(model_dir, device="cpu")
        docs_loop(model_dir, paths[:4], 4)  # warm-up: first-call allocations are not what we measure
        best = {}
        for _ in range(args.repeat):  # interleaved, so background load affects every method alike
            seconds, count, encoded = pixdex_run(encoder, folder, work, args.batch_size, args.workers)
            assert count == len(paths), f"pixdex stored {count} of {len(paths)} images"
            assert encoded == len(originals), f"pixdex encoded {encoded} images for {len(originals)} contents"
            for method, sec in [("pixdex index_collection", seconds),
                                ("transformers docs loop (1)", docs_loop(model_dir, paths, 1)),
                                (f"transformers loop ({args.batch_size})",
                                 docs_loop(model_dir, paths, args.batch_size))]:
                best[method] = min(sec, best.get(method, float("inf")))
        base = best["pixdex index_collection"]
        for method, sec in best.items():
            print(f"{name:<12} {method:<28} {sec:8.2f} {len(paths) / sec:9.1f} {sec / base:15.2f}x")
        del encoder


if __name__ == "__main__":
    main()
