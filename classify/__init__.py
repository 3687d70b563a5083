"""Zero-shot classification: a pipeline-compatible classifier and bulk tagging of a stored collection.

Modules: prompts (labels, templates, the clip-imagenet-80 ensemble, label embeddings), scoring (the
models' softmax/sigmoid scoring and the block kernels), classifier (ZeroShotClassifier), tagging
(tag_store over a Store's embeddings) and evaluate (accuracy against ground truth).
"""
