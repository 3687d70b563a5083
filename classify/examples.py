"""Labelled examples for few-shot tagging: stored ids or image files, checked before any work is done.

Given as a CSV file with rows `label,id_or_path` (an optional `label,...` header; paths relative to the
CSV's folder, else to the current one), as (label, id_or_path) pairs, or as {label: [id_or_path, ...]}.
Stored ids use their stored embedding; files outside the store are encoded on the fly with the store's
model. Every row is checked (label known, id stored, file present, no image with two labels in
single-label mode) before an image is encoded.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.errors import PixdexError

MAX_EXAMPLES = 100_000


@dataclass(frozen=True)
class ExampleRef:
    """One labelled example as given: a stored id or an image file, and where it came from (for errors)."""

    label: str
    item: int | str  # stored id, or an absolute file path
    where: str


@dataclass
class ExamplePlan:
    """Checked examples: each distinct image once, with its label index (single) or indices (multi)."""

    labels: list[str]
    multi: bool
    items: list[int | str] = field(default_factory=list)
    label_sets: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def targets(self) -> np.ndarray:
        """[n] label indices (single) or [n, labels] bool (multi)."""
        if not self.multi:
            return np.array([s[0] for s in self.label_sets], np.int64)
        out = np.zeros((len(self.items), len(self.labels)), bool)
        for i, s in enumerate(self.label_sets):
            out[i, s] = True
        return out

    def stored_ids(self) -> list[int]:
        return [x for x in self.items if isinstance(x, int)]


def _item(value, base: Path | None, where: str) -> int | str:
    """A stored id (an integer) or an existing image file's absolute path."""
    if isinstance(value, bool):
        raise PixdexError(f"{where}: {value!r} is neither a stored id nor a file")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise PixdexError(f"{where}: {value!r} is neither a stored id nor a file")
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    p = Path(text).expanduser()
    candidates = [p] if p.is_absolute() else [c for c in ((base / p) if base else None, Path.cwd() / p) if c]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    raise PixdexError(f"{where}: file {text} does not exist")


def read_examples_csv(path: str | os.PathLike) -> list[ExampleRef]:
    """Rows `label,id_or_path` of a CSV file (header optional)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PixdexError(f"examples file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PixdexError(f"cannot read examples file {p}: {exc}") from None
    refs = []
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if n == 1 and row[0].strip().lower() == "label":
            continue
        where = f"examples file {p.name} line {n}"
        if len(row) != 2:
            raise PixdexError(f"{where}: expected 'label,id_or_path', got {len(row)} field(s)")
        label = row[0].strip()
        if not label:
            raise PixdexError(f"{where}: the label is empty")
        refs.append(ExampleRef(label, _item(row[1], p.parent, where), where))
        if len(refs) > MAX_EXAMPLES:
            raise PixdexError(f"examples file {p}: more than {MAX_EXAMPLES} examples")
    return refs


def as_refs(examples) -> list[ExampleRef]:
    """Examples from a CSV path, (label, id_or_path) pairs, {"label", "id"/"path"} dicts or {label: [...]}."""
    if examples is None:
        return []
    if isinstance(examples, (str, os.PathLike)):
        return read_examples_csv(examples)
    pairs: Iterable
    if isinstance(examples, Mapping):
        pairs = []
        for label, items in examples.items():
            if isinstance(items, (str, int)) or not isinstance(items, Sequence):
                raise PixdexError(f"examples of {label!r} must be a list of stored ids or paths")
            pairs.extend((label, x) for x in items)
    elif isinstance(examples, Sequence):
        pairs = examples
    else:
        raise PixdexError("examples must be a CSV path, a list of (label, id_or_path) pairs "
                          "or {label: [...]}")
    refs = []
    for k, pair in enumerate(pairs):
        where = f"example {k + 1}"
        if isinstance(pair, Mapping):
            if (set(pair) - {"label", "id", "path"} or "label" not in pair
                    or ("id" in pair) == ("path" in pair)):
                raise PixdexError(f"{where}: give {{'label': ..., 'id': N}} or {{'label': ..., 'path': ...}}")
            pair = (pair["label"], pair.get("id", pair.get("path")))
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise PixdexError(f"{where}: expected a (label, id_or_path) pair, got {pair!r}")
        label, value = pair
        if not isinstance(label, str) or not label.strip():
            raise PixdexError(f"{where}: label {label!r} is not a non-empty string")
        refs.append(ExampleRef(label.strip(), _item(value, None, where), where))
        if len(refs) > MAX_EXAMPLES:
            raise PixdexError(f"more than {MAX_EXAMPLES} examples")
    return refs


def plan_examples(refs: Sequence[ExampleRef], labels: Sequence[str], store, multi: bool) -> ExamplePlan:
    """Check every example against the labels and the store; PixdexError naming the first bad one."""
    index = {x: i for i, x in enumerate(labels)}
    plan = ExamplePlan(list(labels), multi)
    seen: dict[int | str, int] = {}
    for ref in refs:
        if ref.label not in index:
            raise PixdexError(f"{ref.where}: label {ref.label!r} is not one of the labels "
                              f"({', '.join(labels)})")
        if isinstance(ref.item, int):
            try:
                store.locate([ref.item])
            except PixdexError:
                raise PixdexError(f"{ref.where}: unknown id {ref.item} (store {store.path} has "
                                  f"{store.count} items)") from None
        j = index[ref.label]
        k = seen.get(ref.item)
        if k is None:
            seen[ref.item] = len(plan.items)
            plan.items.append(ref.item)
            plan.label_sets.append([j])
        elif j not in plan.label_sets[k]:
            if not multi:
                other = labels[plan.label_sets[k][0]]
                raise PixdexError(f"{ref.where}: {_name(ref.item)} is labelled both {other!r} "
                                  f"and {ref.label!r}; "
                                  "single-label tagging needs one label per image (or use --mode multi)")
            plan.label_sets[k].append(j)
    return plan


def _name(item: int | str) -> str:
    return f"id {item}" if isinstance(item, int) else f"file {item}"


def example_vectors(plan: ExamplePlan, store, encoder=None) -> np.ndarray:
    """[n, dim] float32 unit embeddings: stored ones read from the store, files encoded with `encoder`."""
    out = np.zeros((len(plan), store.dim), np.float32)
    ids = [(i, x) for i, x in enumerate(plan.items) if isinstance(x, int)]
    files = [(i, x) for i, x in enumerate(plan.items) if not isinstance(x, int)]
    if ids:
        out[[i for i, _ in ids]] = store.vectors([x for _, x in ids])
    if files:
        if encoder is None:
            raise PixdexError("examples given as files need the store's model to encode them")
        try:
            out[[i for i, _ in files]] = encoder.encode_images([x for _, x in files])
        except PixdexError as exc:
            raise PixdexError(f"cannot encode an example image: {exc}") from None
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)
