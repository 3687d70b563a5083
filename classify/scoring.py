"""Scores from embeddings, exactly as the models' forward and the zero-shot pipeline compute them.

CLIP-like: logits = logit_scale * cos(image, prompt); scores = softmax over the candidate labels.
SigLIP/SigLIP2: logits = logit_scale * cos + logit_bias; scores = sigmoid, each label on its own.
The block kernels below apply the same formulas to many stored embeddings at a time: one float32
BLAS matmul per block, then top-k by repeated argmax (or argpartition for large k), no Python loop
per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

REPEATED_ARGMAX_MAX_K = 8  # above this, argpartition + sort is cheaper than k argmax passes


@dataclass(frozen=True)
class Scoring:
    """How a model turns cosines into label scores."""

    family: str  # "clip" (softmax) or "siglip" (sigmoid)
    logit_scale: float  # already exp()'d, as the forward multiplies by it
    logit_bias: float | None = None

    @classmethod
    def of(cls, encoder) -> Scoring:
        return cls(encoder.family, float(encoder.logit_scale), encoder.logit_bias)

    @property
    def softmax(self) -> bool:
        return self.family != "siglip"

    @property
    def bias(self) -> float:
        return float(self.logit_bias or 0.0) if not self.softmax else 0.0

    def logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """[images, labels] logits from unit vectors, in the order of the model's forward."""
        logits_per_text = torch.matmul(texts, images.t()) * self.logit_scale
        if not self.softmax:
            logits_per_text = logits_per_text + self.bias
        return logits_per_text.t()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The pipeline's postprocess: softmax over labels (CLIP) or elementwise sigmoid (SigLIP)."""
        return logits.softmax(dim=-1) if self.softmax else torch.sigmoid(logits)

    def scores(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        """[images, labels] scores for float32 unit embeddings."""
        with torch.inference_mode():
            lg = self.logits(torch.from_numpy(np.asarray(images, np.float32)),
                             torch.from_numpy(np.asarray(texts, np.float32)))
            return self.probabilities(lg).numpy()


# ---- block kernels (many stored embeddings at once) -------------------------------------------------
def unit_rows(block: np.ndarray) -> np.ndarray:
    """float32 copy of a (float16) block with every row rescaled to unit length (undoes fp16 drift)."""
    b = np.asarray(block).astype(np.float32)  # always a fresh array: the store's shards are read-only
    norms = np.sqrt(np.einsum("ij,ij->i", b, b))
    norms[norms == 0] = 1.0
    b /= norms[:, None]
    return b


def top_k_logits(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """([rows, k] column indices, their logits, masked) of the k largest per row, best first, ties in
    column order (like the pipeline's stable sort). For small k this overwrites the first `masked`
    chosen entries of each row with -inf (k passes of argmax beat a partition there)."""
    rows = np.arange(len(logits))
    k = min(k, logits.shape[1])
    if k <= REPEATED_ARGMAX_MAX_K:
        idx = np.empty((len(logits), k), np.int64)
        vals = np.empty((len(logits), k), logits.dtype)
        for j in range(k):
            if j:
                logits[rows, idx[:, j - 1]] = -np.inf
            idx[:, j] = logits.argmax(axis=1)
            vals[:, j] = logits[rows, idx[:, j]]
        return idx, vals, k - 1
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)  # score descending, then label order
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1), 0


def top_k_block(block: np.ndarray, weights: np.ndarray, scoring: Scoring, k: int,
                offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(label indices [rows, k] int32, scores [rows, k] float32) for one block of stored embeddings.

    weights: label unit embeddings transposed and multiplied by logit_scale ([dim, labels], float32);
    offsets: per-label logit offsets of a classifier taught by examples (None for zero-shot).
    Softmax needs every logit once more: exp(logit - row max) is summed in place over the block.
    """
    logits = unit_rows(block) @ weights
    if offsets is not None:
        logits += offsets
    if not scoring.softmax:
        logits += scoring.bias
    idx, vals, masked = top_k_logits(logits, k)
    if scoring.softmax:
        mx = vals[:, :1]
        np.subtract(logits, mx, out=logits)
        np.exp(logits, out=logits)
        total = logits.sum(axis=1, keepdims=True)
        if masked:  # the entries top_k_logits overwrote with -inf (exp -> 0) count too
            total += np.exp(vals[:, :masked] - mx).sum(axis=1, keepdims=True)
        scores = np.exp(vals - mx) / total
    else:
        scores = 1.0 / (1.0 + np.exp(-vals))
    return idx.astype(np.int32), scores.astype(np.float32)


def above_threshold_block(
    block: np.ndarray, weights: np.ndarray, cuts: np.ndarray, bias: float, max_labels: int | None = None,
    offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-label hits of one block as CSR: (offsets [rows+1], label indices, scores), each row's
    labels by score descending then label order. Score = sigmoid(logit + bias); a hit when
    logit >= cuts[label] (cuts = logit(threshold) - bias, so no sigmoid over the whole block).
    `offsets`: per-label logit offsets of a classifier taught by examples (None for zero-shot)."""
    logits = unit_rows(block) @ weights
    if offsets is not None:
        logits += offsets
    rows, cols = np.nonzero(logits >= cuts[None, :])
    return hits_to_csr(len(block), rows, cols, logits[rows, cols] + bias, max_labels)


def hits_to_csr(
    n: int, rows: np.ndarray, cols: np.ndarray, hit_logits: np.ndarray, max_labels: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigmoid scores of (row, label) hits grouped per row, best first, at most max_labels each."""
    scores = (1.0 / (1.0 + np.exp(-hit_logits.astype(np.float64)))).astype(np.float32)
    order = np.lexsort((cols, -scores, rows))
    rows, cols, scores = rows[order], cols[order], scores[order]
    if max_labels is not None:
        keep = (np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")) < max_labels
        rows, cols, scores = rows[keep], cols[keep], scores[keep]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return offsets, cols.astype(np.int32), scores


def logit(p: np.ndarray) -> np.ndarray:
    """Inverse sigmoid, with 0 and 1 mapped to -inf and +inf."""
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


# ---- the same kernels in torch (GPU) ---------------------------------------------------------------
def top_k_block_torch(
    block: np.ndarray, weights: torch.Tensor, scoring: Scoring, k: int, offsets: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """top_k_block on weights' device (ties may come in any order there)."""
    with torch.inference_mode():
        b = torch.from_numpy(np.ascontiguousarray(block)).to(weights.device, non_blocking=True).float()
        logits = torch.nn.functional.normalize(b, dim=1) @ weights
        if offsets is not None:
            logits += offsets
        if not scoring.softmax:
            logits += scoring.bias
        vals, idx = logits.topk(min(k, logits.shape[1]), dim=1)
        if scoring.softmax:
            scores = torch.exp(vals - torch.logsumexp(logits, dim=1, keepdim=True))
        else:
            scores = torch.sigmoid(vals)
        return idx.int().cpu().numpy(), scores.float().cpu().numpy()


def above_threshold_block_torch(
    block: np.ndarray, weights: torch.Tensor, cuts: torch.Tensor, bias: float, max_labels: int | None = None,
    offsets: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """above_threshold_block with the matmul and comparison on weights' device."""
    with torch.inference_mode():
        b = torch.from_numpy(np.ascontiguousarray(block)).to(weights.device, non_blocking=True).float()
        logits = torch.nn.functional.normalize(b, dim=1) @ weights
        if offsets is not None:
            logits += offsets
        rows, cols = torch.nonzero(logits >= cuts[None, :], as_tuple=True)
        vals = logits[rows, cols].float().cpu().numpy()
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
    return hits_to_csr(len(block), rows, cols, vals + bias, max_labels)
