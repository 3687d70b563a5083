"""End-to-end embedding throughput, side by side in one process on the same JPEG files:

  1. the transformers zero-shot pipeline loop (as its docs use it, batch_size 32),
  2. the docs' "by hand" loop: PIL open -> processor(images=...) -> model.get_image_features,
  3. the model alone on pre-made half-precision tensors (the ceiling),
  4. `pixdex index` (index_collection) from files to a committed store.

Random-weight models with the real architectures (benchmarks/archs.py). Prints images/s, ratios,
GPU utilisation (nvidia-smi sampling) and where pixdex's time goes. Runs on CPU too (small --count).

    python benchmarks/gpu_throughput.py --count 2000 --archs vit-b-32 vit-l-14
    python benchmarks/gpu_throughput.py --count 64 --archs vit-b-32 --device cpu   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from archs import save_random


def make_jpegs(out: Path, count: int, size=(640, 480), seed: int = 0) -> list[str]:
    """Synthetic photo-like JPEGs (smooth colour fields with shapes), quality 90."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        p = out / f"img_{i:05d}.jpg"
        paths.append(str(p))
        if p.exists():
            continue
        base = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
        d = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            r = int(rng.integers(20, 120))
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        img.save(p, "JPEG", quality=90)
    return paths


class GpuSampler:
    """Samples GPU utilisation with nvidia-smi every 200 ms while active."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except Exception:
                pass
            self._stop.wait(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_pipeline(model_dir: str, paths: list[str], device, dtype) -> float:
    from transformers import pipeline

    pipe = pipeline("zero-shot-image-classification", model=model_dir, device=device, dtype=dtype)
    labels = ["a cat", "a dog", "a car"]
    pipe(paths[:8], candidate_labels=labels, batch_size=8)  # warm-up
    t0 = time.perf_counter()
    pipe(paths, candidate_labels=labels, batch_size=32)
    sync(device)
    return len(paths) / (time.perf_counter() - t0)


def run_by_hand(model_dir: str, paths: list[str], device, dtype, batch: int = 64) -> float:
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            images = [Image.open(p).convert("RGB") for p in paths[i : i + batch]]
            inputs = proc(images=images, return_tensors="pt").to(device)
            out = model.get_image_features(pixel_values=inputs["pixel_values"].to(dtype))
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            emb.float().cpu()
    sync(device)
    return len(paths) / (time.perf_counter() - t0)


def run_model_only(model_dir: str, device, dtype, batch: int, steps: int) -> float:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    size = model.config.vision_config.image_size
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        model.get_image_features(pixel_values=x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.get_image_features(pixel_values=x)
        sync(device)
    return batch * steps / (time.perf_counter() - t0)


def run_pixdex(model_dir: str, image_dir: Path, device: str, batch: int,
               workers: int | None) -> tuple[float, dict]:
    from indexer.job import index_collection

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = index_collection([str(image_dir)], Path(tmp) / "store", model=model_dir, device=device,
                             batch_size=batch, workers=workers, progress=False)
        wall = time.perf_counter() - t0
    return s.indexed / wall, {"job_images_per_s_encoding_phase": s.images_per_second,
                              "wall_s": round(wall, 2), "timings": getattr(s, "timings", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--archs", nargs="+", default=["vit-b-32", "vit-l-14"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None,
                    help="pixdex batch size (default 512 on GPU, 32 on CPU)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--pipeline-count", type=int, default=None, help="images for the slow peer loops")
    ap.add_argument("--work", default=None, help="folder for images and models (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    import torch

    from indexer.encoder import pick_device

    device = pick_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    work = Path(args.work or tempfile.mkdtemp(prefix="pixdex-bench-"))
    paths = make_jpegs(work / "images", args.count)
    peer_paths = paths[: args.pipeline_count or min(len(paths), 512 if device.type == "cuda" else 64)]
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    print(f"device {device} ({gpu}), {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{len(paths)} JPEGs 640x480, peers on {len(peer_paths)}")
    results = {"device": str(device), "gpu": gpu, "cores": os.cpu_count(), "count": len(paths), "archs": {}}
    for arch in args.archs:
        model_dir = (str(save_random(arch, work / arch)) if not (work / arch / "config.json").exists()
                     else str(work / arch))
        row = {}
        with GpuSampler() as g:
            row["pipeline"] = run_pipeline(model_dir, peer_paths, device, dtype)
        row["pipeline_gpu_util"] = g.mean
        with GpuSampler() as g:
            row["by_hand"] = run_by_hand(model_dir, peer_paths, device, dtype)
        row["by_hand_gpu_util"] = g.mean
        batch = args.batch or (512 if device.type == "cuda" else 32)
        with GpuSampler() as g:
            row["model_only"] = run_model_only(model_dir, device, dtype,
                                               batch=1024 if device.type == "cuda" else 32,
                                               steps=10 if device.type == "cuda" else 2)
        row["model_only_gpu_util"] = g.mean
        with GpuSampler() as g:
            row["pixdex"], row["pixdex_detail"] = run_pixdex(model_dir, work / "images", str(device), batch,
                                                              args.workers)
        row["pixdex_gpu_util"] = g.mean
        row["pixdex_vs_pipeline"] = row["pixdex"] / row["pipeline"]
        row["pixdex_vs_by_hand"] = row["pixdex"] / row["by_hand"]
        row["pixdex_vs_model_only"] = row["pixdex"] / row["model_only"]
        results["archs"][arch] = row
        print(f"\n{arch}: images/s  pipeline {row['pipeline']:.1f} | by hand {row['by_hand']:.1f} | "
              f"model only {row['model_only']:.1f} | pixdex index {row['pixdex']:.1f}")
        print(f"  pixdex = {row['pixdex_vs_pipeline']:.1f}x pipeline, "
              f"{row['pixdex_vs_by_hand']:.1f}x by hand, "
              f"{100 * row['pixdex_vs_model_only']:.0f}% of model-only;  "
              f"GPU util: pipeline {row['pipeline_gpu_util']}"
              f"%, pixdex {row['pixdex_gpu_util']}%")
        print(f"  pixdex detail: {json.dumps(row['pixdex_detail'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
