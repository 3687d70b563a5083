"""A drop-in for transformers' zero-shot-image-classification pipeline, faster on many images.

Same call, inputs, scoring and output as `pipeline("zero-shot-image-classification", model=...)`;
the label prompts are embedded once per (labels, template) and cached, and images are embedded in
batches instead of one forward pass per image with every prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from classify.prompts import DEFAULT_TEMPLATE, check_labels, check_template
from classify.scoring import Scoring
from indexer.encoder import Encoder, get_encoder
from indexer.errors import PixdexError
from indexer.inputs import ImageInput, load_image_input
from indexer.models import DEFAULT_MODEL
from indexer.params import BATCH_SIZE, TIMEOUT, TOP_K

LABEL_CACHE_SIZE = 64  # (labels, template) sets kept embedded


class ZeroShotClassifier:
    """clf(images, candidate_labels=[...]) -> [{"score", "label"}, ...] sorted by score (ties in label
    order), or one such list per image when given a list of images."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 32,
                 encoder: Encoder | None = None):
        self.batch_size = BATCH_SIZE.check(batch_size, "batch_size")
        self.encoder = encoder if encoder is not None else get_encoder(model, device=device)
        self.scoring = Scoring.of(self.encoder)
        self._labels: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput] | None = None,
        candidate_labels: Sequence[str] | str | None = None,
        hypothesis_template: str = DEFAULT_TEMPLATE,
        top_k: int | None = None,
        timeout: float | None = None,
        **kwargs,
    ) -> list[dict] | list[list[dict]]:
        if "images" in kwargs:  # the pipeline's older keyword
            image = kwargs.pop("images")
        if kwargs:
            raise PixdexError(f"unexpected argument(s): {', '.join(sorted(kwargs))}")
        if image is None:
            raise PixdexError("no image given: "
                              "pass a path, URL, PIL image, bytes or base64 string (or a list)")
        labels = check_labels(candidate_labels)
        check_template(hypothesis_template)
        if top_k is not None:
            top_k = TOP_K.check(top_k, "top_k")
        if timeout is not None:
            timeout = TIMEOUT.check(timeout, "timeout")
        many = isinstance(image, (list, tuple))
        images = list(image) if many else [image]
        scores = self.scores(images, labels, hypothesis_template, timeout)
        results = [ranked(row, labels, top_k) for row in scores]
        return results if many else results[0]

    def scores(self, images: Sequence[ImageInput], labels: Sequence[str],
               hypothesis_template: str = DEFAULT_TEMPLATE, timeout: float | None = None) -> np.ndarray:
        """[images, labels] pipeline scores (softmax or sigmoid), in label order."""
        texts = self.label_embeddings(labels, hypothesis_template)
        embs = [self.embed_images(images[i : i + self.batch_size], timeout)
                for i in range(0, len(images), self.batch_size)]
        if not embs:
            return np.zeros((0, len(labels)), np.float32)
        return self.scoring.scores(np.concatenate(embs), texts)

    def embed_images(self, images: Sequence[ImageInput], timeout: float | None = None) -> np.ndarray:
        """Unit image embeddings of one batch (each input loaded like the pipeline: path/URL/PIL/bytes)."""
        pil = [load_image_input(x, timeout=timeout) if timeout is not None else load_image_input(x)
               for x in images]
        return self.encoder.embed_pixels(self.encoder.preprocess(pil))

    def label_embeddings(self, labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> np.ndarray:
        """Unit prompt embeddings for the labels, computed once per (labels, template) and cached."""
        key = (tuple(labels), template)
        if key in self._labels:
            self._labels.move_to_end(key)
            return self._labels[key]
        emb = self.encoder.encode_texts([template.format(x) for x in labels])
        self._labels[key] = emb
        if len(self._labels) > LABEL_CACHE_SIZE:
            self._labels.popitem(last=False)
        return emb


def ranked(scores: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[dict]:
    """[{"score", "label"}] by score descending, ties in label order (the pipeline's stable sort)."""
    pairs = sorted(zip(scores.tolist(), labels), key=lambda x: -x[0])
    if top_k is not None:
        pairs = pairs[:top_k]
    return [{"score": s, "label": label} for s, label in pairs]
