"""The model wrapper: one object that turns images and texts into L2-normalised embeddings.

Loads any CLIP-style model that AutoModelForZeroShotImageClassification accepts (CLIP, SigLIP,
SigLIP2, ...) through from_pretrained, so a hub id, a cached model and a local folder all work.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from indexer.errors import PixdexError
from indexer.inputs import ImageInput, load_image_input
from indexer.models import DEFAULT_MODEL, ModelInfo, explain_load_failure, resolve_model
from indexer.params import check_device
from indexer.pixels import UINT8_KEY, normalise, plan_for

if TYPE_CHECKING:
    from indexer.store import Store

SIGLIP_TEXT_LENGTH = 64  # what the zero-shot pipeline pads SigLIP prompts to


def pick_device(device: str = "auto") -> torch.device:
    """`auto` means cuda, then mps, then cpu; a device this machine lacks is a PixdexError."""
    device = check_device(device)
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# Config entries that say how and where a model was loaded, not what it is.
LOAD_DETAILS = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash",
                          "_attn_implementation_autoset"})


def stable_config(config):
    """The config without load details, at every level (text and vision sub-configs too)."""
    if isinstance(config, dict):
        return {k: stable_config(v) for k, v in config.items() if k not in LOAD_DETAILS}
    return config


def weights_fingerprint(model: torch.nn.Module, config: dict, legacy: bool = False) -> str:
    """A short hash of the config and a sample of every weight tensor: same model, same fingerprint.

    The same weights give the same fingerprint from any folder, with any transformers version, loaded in
    float32 or float16 (samples are compared at float16 precision). legacy=True: the hash stores made
    before that recorded (it changed with the folder, the transformers version and the dtype).
    """
    h = hashlib.sha256(json.dumps(config if legacy else stable_config(config), sort_keys=True,
                                  default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:256], flat[-256:]])
        if not legacy and sample.is_floating_point():
            sample = sample.to(torch.float16)
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@contextmanager
def quiet_transformers():
    """Hide transformers' weight-loading bars and advisory warnings while a model loads
    (errors still raise)."""
    from transformers.utils import logging as hf_logging

    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_were_off:
            hf_logging.enable_progress_bar()


def features(out) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4 and a pooled output in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class Encoder:
    """Embeds images and texts with one CLIP-style model; outputs are float32 and L2-normalised."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: torch.dtype | None = None):
        from transformers import AutoModelForZeroShotImageClassification, AutoProcessor

        self.path = resolve_model(model)
        # a folder is recorded by its absolute path so a store's model can be found from any directory
        self.name = self.path if os.path.isdir(os.path.expanduser(str(model))) else str(model)
        self.device = pick_device(device)
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        try:
            with quiet_transformers():
                self.model = AutoModelForZeroShotImageClassification.from_pretrained(self.path, dtype=dtype)
                self.processor = AutoProcessor.from_pretrained(self.path)
        except ImportError as exc:
            raise PixdexError(f"model '{model}' needs a package that is not installed: "
                              f"{_first_line(exc)}") from None
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):  # a damaged config.json
                raise explain_load_failure(model, exc, self.path) from None
            raise PixdexError(f"model '{model}' is not a CLIP-style zero-shot image model: "
                              f"{_first_line(exc)}") from None
        except Exception as exc:  # OSError, SafetensorError, torch errors: damaged or missing files
            raise explain_load_failure(model, exc, self.path) from None
        self.model.to(self.device).eval()
        self.config = self.model.config
        self.model_type = self.config.model_type
        self.family = "siglip" if "siglip" in self.model_type else "clip"
        self.image_processor = self.processor.image_processor
        self.tokenizer = self.processor.tokenizer
        self.pixel_plan = plan_for(self.image_processor)  # None: the processor is called as is
        self.logit_scale = float(self.model.logit_scale.detach().float().exp().item())
        bias = getattr(self.model, "logit_bias", None)
        self.logit_bias = float(bias.detach().float().item()) if bias is not None else None
        self.fingerprint = weights_fingerprint(self.model, self.config.to_dict())
        self.legacy_fingerprint = weights_fingerprint(self.model, self.config.to_dict(), legacy=True)
        self.dim = int(self.encode_texts(["a"]).shape[1])

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.family, self.dim, self.fingerprint, self.model_type,
                         legacy_fingerprint=self.legacy_fingerprint)

    @property
    def image_size(self) -> int:
        """The largest edge the processor resizes images to (JPEG draft decoding stays 2x above it)."""
        ip = self.image_processor
        size = dict(getattr(ip, "size", None) or {})
        edges = [int(v) for k, v in size.items() if k in ("shortest_edge", "height", "width") and v]
        patch, max_patches = getattr(ip, "patch_size", None), getattr(ip, "max_num_patches", None)
        if isinstance(patch, int) and isinstance(max_patches, int):  # NaFlex (SigLIP2): a square's edge
            edges.append(patch * math.isqrt(max_patches))
        if not edges:
            edges.append(int(getattr(self.config.vision_config, "image_size", 224)))
        return max(edges)

    # ---- text -------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise like the zero-shot pipeline: SigLIP pads to 64 tokens, CLIP to the longest."""
        if self.family == "siglip":
            kwargs = {"padding": "max_length", "max_length": SIGLIP_TEXT_LENGTH, "truncation": True}
        else:
            max_len = getattr(self.config.text_config, "max_position_embeddings", 77)
            kwargs = {"padding": True, "truncation": True, "max_length": max_len}
        return self.tokenizer(list(texts), return_tensors="pt", **kwargs)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> np.ndarray:
        """Text embeddings, one row per text."""
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size]).to(self.device)
            rows.append(self._finish(features(self.model.get_text_features(**tokens)), normalize))
        if not rows:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return np.concatenate(rows)

    # ---- images -----------------------------------------------------------------------------
    def preprocess(self, images: Sequence) -> dict[str, np.ndarray]:
        """The model's own processor on RGB PIL images (numpy arrays, ready to batch)."""
        return dict(self.image_processor(images=list(images), return_tensors="np"))

    @torch.inference_mode()
    def embed_pixels(self, batch: dict[str, np.ndarray], normalize: bool = True) -> np.ndarray:
        """Image embeddings from preprocessed arrays (the output of preprocess, possibly stacked),
        or from {UINT8_KEY: NHWC uint8} pixels that are rescaled and normalised here, on the device."""
        if UINT8_KEY in batch:
            raw = torch.from_numpy(np.ascontiguousarray(batch[UINT8_KEY]))
            if self.device.type == "cuda":
                raw = raw.pin_memory()
            pixel_values = normalise(raw.to(self.device, non_blocking=True), self.pixel_plan, self.dtype)
            return self._finish(features(self.model.get_image_features(pixel_values=pixel_values)), normalize)
        tensors = {}
        for key, value in batch.items():
            t = torch.from_numpy(np.ascontiguousarray(value))
            if t.is_floating_point():
                t = t.to(self.dtype)
            tensors[key] = t.to(self.device, non_blocking=True)
        return self._finish(features(self.model.get_image_features(**tensors)), normalize)

    def encode_images(
        self, images: Sequence[ImageInput] | ImageInput, batch_size: int = 64, normalize: bool = True
    ) -> np.ndarray:
        """Embeddings for paths, URLs, PIL images or bytes (one row each)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        rows = []
        for start in range(0, len(images), batch_size):
            pil = [load_image_input(x) for x in images[start : start + batch_size]]
            rows.append(self.embed_pixels(self.preprocess(pil), normalize))
        if not rows:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(rows)

    def _finish(self, emb: torch.Tensor, normalize: bool) -> np.ndarray:
        emb = emb.float()
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy()


_CACHE: dict[tuple, Encoder] = {}


def get_encoder(model: str = DEFAULT_MODEL, device: str = "auto") -> Encoder:
    """A process-wide cached Encoder, so opening several stores loads a model once."""
    key = (resolve_model(model), device, os.getpid())
    if key not in _CACHE:
        _CACHE[key] = Encoder(model, device=device)
    return _CACHE[key]


def store_encoder(store: Store, model: str | Encoder | None = None, device: str = "auto") -> Encoder:
    """The store's model (or `model`), loaded once per process and checked against the store's fingerprint."""
    enc = model if isinstance(model, Encoder) else get_encoder(model or store.model["name"], device=device)
    store.check_model(enc.info)
    return enc
