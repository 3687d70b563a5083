"""Zero-shot labels for the API: uploaded images through the classifier, stored ids from their embeddings."""

from __future__ import annotations

from classify.classifier import DEFAULT_TEMPLATE, ZeroShotClassifier, ranked


def classifier(service) -> ZeroShotClassifier:
    """One classifier per service, sharing the service's encoder (its label cache lives across requests)."""
    if getattr(service, "_classifier", None) is None:
        service._classifier = ZeroShotClassifier(encoder=service.encoder)
    return service._classifier


def score_ids(service, ids: list[int], labels: list[str], template: str | None, top_k=None) -> list[dict]:
    """[{"id", "path", "labels": [{"score","label"}...]}] scored from stored embeddings (no re-encoding)."""
    clf = classifier(service)
    texts = clf.label_embeddings(labels, template or DEFAULT_TEMPLATE)
    scores = clf.scoring.scores(service.store.vectors(ids), texts)
    paths = service.store.paths(ids)
    return [{"id": int(i), "path": p, "labels": ranked(row, labels, top_k)} for i, p, row in zip(ids, paths, scores)]


def score_image(service, image, labels: list[str], template: str | None) -> list[dict]:
    return classifier(service)(image, candidate_labels=labels, hypothesis_template=template or DEFAULT_TEMPLATE)
