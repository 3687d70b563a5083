"""The fast image-query path: query images through the model's vision tower as a cached ONNX graph.

Images are resized and cropped with PIL as the model's processor does (indexer.pixels, the indexer's own
fast path), and the graph (indexer.onnx_export) takes those uint8 pixels: rescale and normalisation, vision
model, projection and L2 normalisation. No torch import. Processors indexer.pixels cannot replay
(SigLIP2's NaFlex patches, ...) get no export, and their image queries keep transformers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.inputs import ImageInput, load_image_input
from indexer.onnx_cache import load_export, session
from indexer.pixels import PixelPlan, resize_crop


def plan_from(record: dict) -> PixelPlan:
    """A PixelPlan from its sidecar record (lists back to tuples)."""
    return PixelPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def pixels(images: Sequence, plan: PixelPlan) -> np.ndarray:
    """NHWC uint8 batch of RGB PIL images, resized and cropped like the model's processor."""
    return np.stack([resize_crop(img, plan) for img in images])


class OnnxImageEncoder:
    """Encodes query images with a checked export: float32, L2-normalised, one row per image."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        self.dim = int(meta["dim"])
        self.fingerprint = meta["fingerprint"]
        self.plan = plan_from(meta["pixels"])
        self.session = session(folder / meta["graph"]["file"], threads=min(2, os.cpu_count() or 1))
        self.input = self.session.get_inputs()[0].name

    def encode_pil(self, images: Sequence) -> np.ndarray:
        """Embeddings of RGB PIL images."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        out = self.session.run(None, {self.input: pixels(images, self.plan)})[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 16) -> np.ndarray:
        """Embeddings for paths, URLs, PIL images or bytes, like Encoder.encode_images."""
        rows = [self.encode_pil([load_image_input(x) for x in images[i : i + batch_size]])
                for i in range(0, len(images), batch_size)]
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)


def load_image_encoder(fingerprint: str) -> tuple[OnnxImageEncoder | None, str]:
    """The fast image encoder for a model fingerprint (cached per process), or (None, why not)."""
    return load_export(fingerprint, "image", OnnxImageEncoder)
