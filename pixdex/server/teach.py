"""Few-shot tagging for the API: labels taught by stored examples, the shown ids scored, suggestions.

POST /api/classify with "examples": [{"label": ..., "id": N}, ...] (stored ids only: the server never
reads a path a client names) and optionally "suggest": N. The checks and the classifier are the CLI's
own (classify.examples, classify.fewshot, classify.suggest).
"""

from __future__ import annotations

import numpy as np

from classify.classifier import ranked
from classify.examples import as_refs, plan_examples
from classify.fewshot import Examples, check_examples, teach
from classify.prompts import LabelSet
from classify.scoring import top_k_block
from classify.suggest import check_suggest, suggest_examples
from indexer.errors import InvalidType, LimitExceeded
from indexer.ids import check_id


def check_example_ids(examples, max_examples: int) -> list[dict]:
    """The request's examples as [{"label", "id"}] with valid ids (no paths), within the limit."""
    if not isinstance(examples, list):
        raise InvalidType('examples must be a list of {"label": ..., "id": N} objects')
    if len(examples) > max_examples:
        raise LimitExceeded(f"{len(examples)} examples exceed the limit of {max_examples}")
    out = []
    for k, ex in enumerate(examples):
        if not isinstance(ex, dict) or set(ex) != {"label", "id"}:
            raise InvalidType(f'examples[{k}] must be {{"label": ..., "id": N}} (stored ids only)')
        out.append({"label": ex["label"], "id": check_id(ex["id"], f"examples[{k}].id")})
    return out


def plan(examples, labels: list[str], store, suggest, max_examples: int):
    """Checked examples and suggestion count (every check before any work)."""
    refs = as_refs(check_example_ids(examples if examples is not None else [], max_examples))
    suggest = check_suggest(0 if suggest is None else suggest)
    p = plan_examples(refs, labels, store, multi=False) if refs else None
    if p is not None:
        check_examples(labels, Examples(np.zeros((len(p), 0), np.float32), p.targets(), False))
    return p, suggest


def teach_and_score(encoder, store, ids: list[int], labels: list[str], template: str, top_k, p,
                    suggest: int) -> dict:
    """Scores of `ids` by the labels taught by the planned examples, what was taught, and suggestions."""
    label_set = LabelSet.build(encoder, labels, [template])
    if p is not None:
        taught = teach(label_set, store.vectors(p.items), p.targets())
    else:
        from classify.fewshot import Taught

        taught = Taught(label_set, "single")
    w, _ = taught.weights("single")
    idx, sc = top_k_block(store.vectors(ids), w, taught.scoring, len(labels), taught.offsets("single"))
    paths = store.paths(ids)
    results = []
    for i, path, order, scores in zip(ids, paths, idx, sc):
        row = np.zeros(len(labels), np.float64)
        row[order] = scores
        results.append({"id": int(i), "path": path, "labels": ranked(row, labels, top_k)})
    out = {"results": results, "classifier": taught.info()}
    if suggest:
        exclude = p.items if p is not None else []
        out["suggestions"] = [s.to_dict() for s in suggest_examples(store, taught, suggest, exclude=exclude)]
    return out
