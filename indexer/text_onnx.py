"""The fast text path: query texts through the model's text tower as a cached ONNX graph (no torch import).

The export (indexer.onnx_export, checked by indexer.onnx_cache) holds the text model, projection and L2
normalisation as Encoder.encode_texts runs them, and the model's own tokenizer rules (indexer.text_tokens).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.onnx_cache import check_export, export_dir, fast_path_enabled, onnxruntime_missing, session
from indexer.text_tokens import QueryTokenizer, TokenSpec


class OnnxTextEncoder:
    """Encodes query texts with a checked export: float32, L2-normalised, one row per text."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        self.dim = int(meta["dim"])
        self.fingerprint = meta["fingerprint"]
        spec = meta["tokenizer"]["spec"]
        self.tokenizer = QueryTokenizer(TokenSpec(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in spec.items()}), folder)
        self.session = session(folder / meta["graph"]["file"])

    def can_encode(self, texts: Sequence[str]) -> bool:
        return all(self.tokenizer.can_encode(t) for t in texts)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Text embeddings like Encoder.encode_texts (same tokens, same tower, same normalisation)."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.session.run(None, self.tokenizer(texts[i : i + batch_size]))[0]
                for i in range(0, len(texts), batch_size)]
        if not rows:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)


_LOADED: dict[str, OnnxTextEncoder] = {}
_LOAD_LOCK = threading.Lock()


def load_text_encoder(fingerprint: str) -> tuple[OnnxTextEncoder | None, str]:
    """The fast text encoder for a model fingerprint (cached per process), or (None, why not)."""
    if not fast_path_enabled():
        return None, "fast path turned off (PIXDEX_FAST=0)"
    with _LOAD_LOCK:
        if fingerprint in _LOADED:
            return _LOADED[fingerprint], ""
        missing = onnxruntime_missing()
        if missing:
            return None, missing
        found = check_export(fingerprint, "text")
        if found.sidecar is None:
            return None, found.reason
        try:
            enc = OnnxTextEncoder(export_dir(fingerprint, "text"), found.sidecar)
        except Exception as exc:  # any unloadable export means: use transformers
            return None, f"cannot load the fast text export ({exc.__class__.__name__}: {str(exc)[:120]})"
        _LOADED[fingerprint] = enc
        return enc, ""
