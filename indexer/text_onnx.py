"""The fast text path: query texts through the model's text tower as a cached ONNX graph (no torch import).

The export (indexer.onnx_export, checked by indexer.onnx_cache) holds the text model, projection and L2
normalisation as Encoder.encode_texts runs them, and the model's own tokenizer rules (indexer.text_tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.onnx_cache import load_export, session
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


def load_text_encoder(fingerprint: str) -> tuple[OnnxTextEncoder | None, str]:
    """The fast text encoder for a model fingerprint (cached per process), or (None, why not)."""
    return load_export(fingerprint, "text", OnnxTextEncoder)
