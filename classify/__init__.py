"""Zero-shot classification: a pipeline-compatible classifier and bulk tagging of a stored collection.

Modules: prompts (labels, templates, the clip-imagenet-80 ensemble, label embeddings), scoring (the
models' softmax/sigmoid scoring and the block kernels), classifier (ZeroShotClassifier), tagging
(tag_store over a Store's embeddings) and evaluate (accuracy against ground truth).
"""

from importlib import import_module

_EXPORTS = {
    "ZeroShotClassifier": "classify.classifier", "tag_store": "classify.tagging",
    "evaluate_store": "classify.evaluate", "label_embeddings": "classify.prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # lazy, so importing classify.prompts does not load torch
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'classify' has no attribute {name!r}")
