"""Query tokenisers without transformers: the model's own tokenizer rules, replayed with light libraries.

Two kinds cover the CLIP-style families. A `tokenizers` backend (CLIP, SigLIP2, most hub models) is the
very tokenizer transformers runs, saved with the padding and truncation the encoder asks for, so it gives
the same ids by construction. SigLIP's SentencePiece tokenizer is replayed step by step (lower-case,
punctuation removed, whitespace collapsed, EOS appended, padded to max_length). Both are checked against
transformers on probe texts when the export is written (indexer.onnx_export), never trusted blindly.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPIECE_UNDERLINE = "▁"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class TokenSpec:
    """How a text batch becomes model inputs: the tokenizer kind, its file and the padding rules."""

    kind: str  # "tokenizers" (tokenizer.json) or "sentencepiece" (SigLIP's spiece.model)
    file: str  # file name inside the export folder
    inputs: tuple[str, ...]  # model input names, in the order the graph takes them
    max_length: int
    pad_to_max: bool  # SigLIP: always max_length; CLIP: the longest text in the batch
    pad_id: int = 0
    pad_left: bool = False  # Gemma-style tokenizers (SigLIP2) pad on the left
    eos_id: int = 0
    unk_token: str = "<unk>"
    do_lower_case: bool = True
    specials: tuple[str, ...] = field(default=())  # literal texts transformers treats as special tokens


class QueryTokenizer:
    """Texts -> {input name: int64 array} exactly as the encoder's transformers tokenizer makes them."""

    def __init__(self, spec: TokenSpec, folder: Path):
        self.spec = spec
        if spec.kind == "tokenizers":
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(folder / spec.file))
        elif spec.kind == "sentencepiece":
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=str(folder / spec.file))
            self._unk_len = len(self._sp.encode(spec.unk_token, out_type=str))
        else:
            raise ValueError(f"unknown tokenizer kind {spec.kind!r}")

    def can_encode(self, text: str) -> bool:
        """False for texts the replayed rules do not cover (a literal special token such as '</s>')."""
        return self.spec.kind == "tokenizers" or not any(s in text for s in self.spec.specials)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        rows = (self._tokenizers(texts) if self.spec.kind == "tokenizers"
                else [self._spm_ids(t) for t in texts])
        width = self.spec.max_length if self.spec.pad_to_max else max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.spec.pad_id, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if self.spec.pad_left else slice(0, len(row))
            ids[i, cols] = row
            mask[i, cols] = 1
        arrays = {"input_ids": ids, "attention_mask": mask}
        return {name: arrays[name] for name in self.spec.inputs}

    def _tokenizers(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(list(texts))]  # saved with truncation, no padding

    def _spm_ids(self, text: str) -> list[int]:
        """SiglipTokenizer: canonicalise, encode after an <unk> prefix (no dummy prefix), EOS, truncate."""
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        if self.spec.do_lower_case:
            text = text.lower()
        text = re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()
        pieces = self._sp.encode(self.spec.unk_token + text, out_type=str)
        pieces = pieces[self._unk_len :] if len(pieces) >= self._unk_len else pieces
        ids = [self._sp.piece_to_id(p) for p in pieces][: self.spec.max_length - 1]
        return ids + [self.spec.eos_id]
