"""Zero- and few-shot classification: a pipeline-compatible classifier and bulk tagging of a store.

Modules: prompts (labels, templates, the clip-imagenet-80 ensemble, label embeddings), scoring (the
models' softmax/sigmoid scoring and the block kernels), classifier (ZeroShotClassifier), tagging
(tag_store over a Store's embeddings), evaluate (accuracy against ground truth), fewshot (teach: the
classifier taught by labelled examples), examples (reading and checking them), records and taggers
(saved taggers, refresh_tag_sets for items added later) and suggest (what to label next).
"""

from importlib import import_module

_EXPORTS = {
    "ZeroShotClassifier": "classify.classifier", "tag_store": "classify.tagging",
    "evaluate_store": "classify.evaluate", "label_embeddings": "classify.prompts",
    "teach": "classify.fewshot", "refresh_tag_sets": "classify.taggers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # lazy, so importing classify.prompts does not load torch
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'classify' has no attribute {name!r}")
