"""Labels, prompt templates and label embeddings (one template, a list, or a named ensemble)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import InvalidType, LimitExceeded, PixdexError
from indexer.ids import describe

if TYPE_CHECKING:  # both pull in torch; labels and templates are checked without it
    from classify.scoring import Scoring
    from indexer.encoder import Encoder

DEFAULT_THRESHOLD = 0.5
DEFAULT_BACKGROUND = "something"  # CLIP multi-label: the "none of these" label, through the same templates
DEFAULT_TEMPLATE = "This is a photo of {}."  # the transformers zero-shot pipeline's default

# The 80 ImageNet prompt templates of the CLIP paper (openai/CLIP, Prompt_Engineering_for_ImageNet).
CLIP_IMAGENET_80 = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

ENSEMBLES: dict[str, tuple[str, ...]] = {"clip-imagenet-80": CLIP_IMAGENET_80}


# ---- labels ---------------------------------------------------------------------------------------
MAX_LABELS = 10_000  # more candidate labels than any real label set (ImageNet-21k's leaf classes fit)
MAX_LABEL_CHARS = 1_000  # the text model reads ~77 tokens; longer is a mistake (and costs memory)


def check_labels(labels, allow_duplicates: bool = True, max_labels: int | None = MAX_LABELS) -> list[str]:
    """The candidate labels as a list of strings, or a one-line error: an empty list, a non-string label,
    more than `max_labels` (LimitExceeded) or a label over MAX_LABEL_CHARS; without allow_duplicates
    also a repeated or blank label. The CLI, the Python API and the HTTP API all validate here."""
    if isinstance(labels, str):  # like the text zero-shot pipeline: "a, b, c" means three labels
        labels = split_labels(labels)
    if labels is not None and not isinstance(labels, (list, tuple)):
        raise InvalidType(f"candidate labels must be a list of strings, got {type(labels).__name__}")
    if labels is None or len(labels) == 0:
        raise PixdexError("candidate_labels is empty: give at least one label")
    if max_labels is not None and len(labels) > max_labels:
        raise LimitExceeded(f"{len(labels):,} labels exceed the limit of {max_labels:,}")
    out = []
    for x in labels:
        if not isinstance(x, str):
            raise InvalidType(f"candidate label {describe(x)} is not a string (got {type(x).__name__})")
        if len(x) > MAX_LABEL_CHARS:
            raise LimitExceeded(f"label {x[:40]!r}... has {len(x):,} characters (limit {MAX_LABEL_CHARS:,})")
        out.append(x)
    if not allow_duplicates:
        seen = set()
        for x in out:
            if x in seen:
                raise PixdexError(f"label {x!r} is given more than once")
            seen.add(x)
        if any(not x.strip() for x in out):
            raise PixdexError("a label is empty")
    return out


def split_labels(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (empty pieces dropped)."""
    return [p.strip() for p in text.split(",") if p.strip()]


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file (trailing whitespace stripped)."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PixdexError(f"{what} file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PixdexError(f"cannot read {what} file {p}: {exc}") from None
    lines = [line.rstrip() for line in lines if line.strip()]
    if not lines:
        raise PixdexError(f"{what} file {p} is empty")
    return lines


def read_labels_file(path: str | Path) -> tuple[list[str], dict[str, float]]:
    """Labels one per line; an optional TAB then a number sets that label's multi-label threshold."""
    labels, thresholds = [], {}
    for line in read_lines(path, "labels"):
        label, _, thr = line.partition("\t")
        label = label.strip()
        labels.append(label)
        if thr.strip():
            try:
                thresholds[label] = float(thr)
            except ValueError:
                raise PixdexError(f"labels file {path}: threshold {thr.strip()!r} of {label!r} "
                                  "is not a number") from None
    return check_labels(labels, allow_duplicates=False), thresholds


# ---- templates ------------------------------------------------------------------------------------
def check_template(template: str) -> str:
    """A template must be a string with one `{}` where the label goes."""
    if not isinstance(template, str):
        raise InvalidType(f"template {describe(template)} is not a string")
    if len(template) > MAX_LABEL_CHARS:
        raise LimitExceeded(f"template of {len(template):,} characters exceeds the limit of "
                            f"{MAX_LABEL_CHARS:,}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise PixdexError(f"template {template!r} is not a valid format string ({exc}); "
                          "use {} for the label") from None
    if not fields:
        raise PixdexError(f"template {template!r} has no {{}} placeholder for the label")
    if fields != [("", "", None)]:
        raise PixdexError(f"template {template!r} is not a valid format for one label: "
                          "use exactly one plain {} "
                          "(no names, positions, conversions or format specs)")
    return template


def resolve_templates(
    template: str | None = None, templates: Sequence[str] | None = None, ensemble: str | None = None
) -> list[str]:
    """The prompt templates from exactly one of: one template, a list, or an ensemble name."""
    given = [x is not None for x in (template, templates, ensemble)]
    if sum(given) > 1:
        raise PixdexError("give only one of a template, a list of templates, or an ensemble")
    if ensemble is not None:
        if ensemble not in ENSEMBLES:
            raise PixdexError(f"unknown prompt ensemble {ensemble!r}; known: {', '.join(sorted(ENSEMBLES))}")
        return list(ENSEMBLES[ensemble])
    if templates is not None:
        templates = list(templates)
        if not templates:
            raise PixdexError("the list of templates is empty")
        return [check_template(t) for t in templates]
    return [check_template(DEFAULT_TEMPLATE if template is None else template)]


# ---- label embeddings -----------------------------------------------------------------------------
def label_embeddings(encoder, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """[labels, dim] float32 unit vectors: each label's normalised prompt embeddings averaged over
    the templates, then renormalised (CLIP's prompt ensembling). One template: its embedding as is."""
    if len(templates) == 1:
        return encoder.encode_texts([templates[0].format(x) for x in labels])
    total = np.zeros((len(labels), encoder.dim), np.float64)
    for t in templates:
        total += encoder.encode_texts([t.format(x) for x in labels])
    total /= np.linalg.norm(total, axis=1, keepdims=True).clip(1e-12)
    return total.astype(np.float32)


# ---- label sets ----------------------------------------------------------------------------------
@dataclass
class LabelSet:
    """Candidate labels embedded with their prompts, plus how the model scores them."""

    labels: list[str]
    embeddings: np.ndarray  # [labels, dim] float32 unit vectors
    scoring: Scoring
    templates: list[str]
    background: np.ndarray | None = None  # [dim] unit vector (CLIP multi-label calibration)

    @classmethod
    def build(cls, encoder: Encoder, labels: Sequence[str], templates: Sequence[str] | None = None,
              background: str | None = DEFAULT_BACKGROUND) -> LabelSet:
        templates = list(templates) if templates else resolve_templates()
        emb = label_embeddings(encoder, labels, templates)
        bg = None
        if background is not None and encoder.family != "siglip":
            bg = label_embeddings(encoder, [background], templates)[0]
        from classify.scoring import Scoring

        return cls(list(labels), emb, Scoring.of(encoder), templates, bg)

    def weights(self, mode: str) -> tuple[np.ndarray, float]:
        """([dim, labels] matmul weights with logit_scale folded in, bias) for the mode's logits."""
        emb = self.embeddings
        if mode == "multi" and self.scoring.softmax:
            if self.background is None:
                raise PixdexError("multi-label tagging with a CLIP-like model needs a background prompt")
            emb = emb - self.background[None, :]
        w = np.ascontiguousarray(emb.T * np.float32(self.scoring.logit_scale), dtype=np.float32)
        return w, self.scoring.bias

    def offsets(self, mode: str) -> None:
        """Per-label logit offsets: none for zero-shot (a classifier taught by examples has them)."""
        return None


def label_thresholds(labels: Sequence[str], threshold: float | None,
                     per_label: dict[str, float] | None = None) -> np.ndarray:
    """One score threshold per label: per_label where given, else threshold (default 0.5)."""
    default = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    per_label = per_label or {}
    unknown = sorted(set(per_label) - set(labels))
    if unknown:
        raise PixdexError(f"threshold given for unknown label {unknown[0]!r}")
    out = np.array([per_label.get(x, default) for x in labels], np.float64)
    bad = (out < 0) | (out > 1) | np.isnan(out)
    if bad.any():
        raise PixdexError(f"threshold {out[bad][0]} of label {labels[int(np.argmax(bad))]!r} "
                          "is not in [0, 1]")
    return out
