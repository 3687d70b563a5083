"""Zero-shot labels for the API: uploaded images through the classifier, stored ids from their embeddings.

Labels and templates arrive here already checked (StoreService.check_labels: the CLI's own checks).
"""

from __future__ import annotations

from classify.classifier import ZeroShotClassifier, ranked


def classifier(service) -> ZeroShotClassifier:
    """One classifier per service, sharing the service's encoder (its label cache lives across requests)."""
    if getattr(service, "_classifier", None) is None:
        service._classifier = ZeroShotClassifier(encoder=service.encoder)
    return service._classifier


def score_ids(service, store, ids: list[int], labels: list[str], template: str, top_k=None) -> list[dict]:
    """[{"id", "path", "labels": [{"score","label"}...]}] scored from stored embeddings (no re-encoding)."""
    clf = classifier(service)
    texts = clf.label_embeddings(labels, template)
    scores = clf.scoring.scores(store.vectors(ids), texts)
    paths = store.paths(ids)
    return [{"id": int(i), "path": p, "labels": ranked(row, labels, top_k)}
            for i, p, row in zip(ids, paths, scores)]


def score_image(service, image, labels: list[str], template: str) -> list[dict]:
    return classifier(service)(image, candidate_labels=labels, hypothesis_template=template)
