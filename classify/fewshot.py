"""Few-shot tagging: a linear classifier on stored embeddings, started from the zero-shot one.

The label text embeddings are the prior. Logistic regression on the unit image embeddings (logits =
logit_scale * (W x + b), softmax for single-label, one sigmoid per label for multi-label) is fitted with
a Gaussian prior centred on the zero-shot weights instead of on zero:

    loss(W, b) = sum_i CE(x_i, y_i) + strength / 2 * (||W - W_text||^2 + ||b||^2)

the classic prior-centred ridge penalty of MAP adaptation (Chelba & Acero 2006, "Adaptation of maximum
entropy capitalizer: little data can help a lot"), here centred on CLIP's text weights as in CLAP
(Silva-Rodriguez et al., CVPR 2024, "A closer look at the few-shot adaptation of large vision-language
models"). An infinite strength is the zero-shot classifier, a tiny one a plain linear probe; between
them lie WiSE-FT-like interpolations (Wortsman et al., CVPR 2022). The strength is chosen by stratified
cross-validation on the examples (held-out cross-entropy) among STRENGTHS (zero-shot itself included) and,
as one more candidate family, a plain ridge probe centred on zero (PROBE_STRENGTHS: scikit-learn's C grid
0.1-100 at CLIP's logit scale), which wins when the label text predicts the examples no better than knowing
nothing. The default (the model's logit scale: one misclassified example can then move its label's weight
by about the length of the text weight, no further) is kept unless another candidate is better by more than
a standard error, and always with fewer than MIN_CV_EXAMPLES examples or a label with a single example (no
fold can hold it out). Then each label's own held-out examples may overrule that strength for the label by
the same rule (a validated form of CLAP's class-adaptive penalty), so labels the prompts misread learn
more freely than labels they read well.
With no example at all the classifier IS the zero-shot one: same weights, same scoring code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from indexer.errors import PixdexError

METHOD = "prior-centred-logistic"
# Candidate strengths in units of the model's logit scale, strongest first (warm starts run along
# the path); inf keeps the zero-shot weights.
STRENGTHS = (math.inf, 10.0, 1.0, 0.1, 0.01)
# Strengths of the plain probe (centred on zero, the text ignored) that competes in the same
# cross-validation, strongest first: chosen when the label text predicts the examples no better.
PROBE_STRENGTHS = (1000.0, 100.0, 10.0, 1.0)
# The default strength: a misclassified example pulls its label's weight by at most about one text-weight
# length. Used when some label has a single example (no fold can hold it out), and kept unless
# cross-validation finds a strength whose held-out loss is lower by more than one standard error.
DEFAULT_STRENGTH = 1.0
MAX_FOLDS = 3
# Fewer held-out examples than this give too rough a standard error to overrule the default strength.
MIN_CV_EXAMPLES = 10
MAX_ITER = 100  # L-BFGS iterations of the final fit
CV_MAX_ITER = 30  # of each warm-started cross-validation fit (only its held-out loss is used)


@contextmanager
def one_thread() -> Iterator[None]:
    """Small fits run faster on one thread than on a contended pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- the solver --------------------------------------------------------------------------------------
def augmented(x: np.ndarray) -> torch.Tensor:
    """[n, dim + 1] float32 rows [x, 1] (the 1 carries the per-label bias)."""
    x = torch.as_tensor(np.asarray(x, np.float32))
    return torch.cat([x, torch.ones(len(x), 1)], dim=1)


@dataclass
class Problem:
    """One fit's fixed parts: the examples in an orthonormal basis of their span, prior logits, targets."""

    feats: torch.Tensor  # [n, r]
    basis: torch.Tensor  # [dim + 1, r]
    prior_logits: torch.Tensor  # [n, labels]
    targets: torch.Tensor  # [n] class indices (single) or [n, labels] 0/1 floats (multi)
    scale: float
    multi: bool
    shift: float = 0.0  # the model's own logit bias (SigLIP), part of the multi-label probabilities
    label_weights: torch.Tensor | None = None  # [labels] relative penalty per label (prior_trust)

    @classmethod
    def of(cls, xa: torch.Tensor, prior: torch.Tensor, targets: torch.Tensor, scale: float, multi: bool,
           shift: float = 0.0, basis: torch.Tensor | None = None) -> Problem:
        """xa: augmented examples; prior: [labels, dim + 1] text weights and biases (unit scale), or zeros
        for a plain probe (every label then weighs the same)."""
        # The optimum's change from the prior lies in the span of the examples (representer theorem),
        # so solving there is exact, and much smaller than dim + 1 when examples are few.
        if basis is None:
            basis = torch.linalg.qr(xa.T)[0] if len(xa) < xa.shape[1] else torch.eye(xa.shape[1])
        prior_logits = scale * (xa @ prior.T)
        trust = (prior_trust(prior_logits, targets, multi, shift) if bool(prior.any())
                 else torch.ones(prior.shape[0]))
        return cls(xa @ basis, basis, prior_logits, targets, scale, multi, shift, trust)

    def loss(self, delta: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """The penalised loss divided by the number of examples (same optimum; scale-free tolerances);
        strength: [labels] penalty per label, 0 for a label kept at its prior (delta masked there)."""
        logits = self.prior_logits + self.scale * (self.feats @ delta.T)
        if self.multi:
            data = F.binary_cross_entropy_with_logits(logits + self.shift, self.targets, reduction="sum")
        else:
            data = F.cross_entropy(logits, self.targets, reduction="sum")
        return (data + 0.5 * (strength[:, None] * delta * delta).sum()) / len(logits)

    def solve(self, strength: float | torch.Tensor, start: torch.Tensor | None = None,
              max_iter: int = MAX_ITER) -> torch.Tensor:
        """[labels, r] change from the prior minimising the penalised loss (L-BFGS, warm-started);
        label j's penalty is strength[j] (or one strength for all) * label_weights[j]; inf keeps label j
        at its prior."""
        labels = self.prior_logits.shape[1]
        delta = torch.zeros(labels, self.feats.shape[1]) if start is None else start.clone()
        per_label = torch.as_tensor(strength, dtype=torch.float32).expand(labels) * self.label_weights
        free = torch.isfinite(per_label)
        if not bool(free.any()):
            return torch.zeros_like(delta)
        mask = free[:, None].float()
        per_label = torch.where(free, per_label, torch.zeros(()))
        delta = (delta * mask).requires_grad_(True)
        opt = torch.optim.LBFGS([delta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-5,
                                tolerance_change=1e-7, history_size=10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = self.loss(delta * mask, per_label)
            value.backward()
            return value

        opt.step(closure)
        return (delta * mask).detach()

    def path(self, strengths: Sequence[float], max_iter: int = MAX_ITER) -> list[torch.Tensor]:
        """The change from the prior ([labels, dim + 1]) for each strength,
        each fit warm-starting the next."""
        out, delta = [], None
        for s in strengths:
            delta = self.solve(s, delta, max_iter)
            out.append(delta @ self.basis.T)
        return out


def prior_trust(prior_logits: torch.Tensor, targets: torch.Tensor, multi: bool,
                shift: float = 0.0) -> torch.Tensor:
    """[labels] how far each label's text weight may be trusted: the odds of the zero-shot probability
    of the right answer on the label's own examples (CLAP's class-adaptive penalty, as odds), so a
    label the prompts already get right stays near them and one they get wrong learns from its
    examples. (The examples were never seen by the zero-shot classifier: an honest measure.)"""
    labels = prior_logits.shape[1]
    if multi:
        p = torch.sigmoid(prior_logits + shift)
        right = torch.where(targets > 0.5, p, 1 - p)  # [n, labels]
        pbar = right.mean(dim=0)
    else:
        p = prior_logits.softmax(dim=1)[torch.arange(len(targets)), targets]
        total = torch.zeros(labels).index_add_(0, targets, p)
        count = torch.zeros(labels).index_add_(0, targets, torch.ones(len(targets)))
        pbar = torch.where(count > 0, total / count.clamp(min=1), torch.full((labels,), 0.5))
    pbar = pbar.clamp(0.01, 0.99)
    return pbar / (1 - pbar)


# ---- choosing the strength ---------------------------------------------------------------------------
def stratified_folds(groups: Sequence, k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint held-out index sets, each group's members dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    keys = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    codes = np.array([keys[g] for g in groups])
    fold_of = np.empty(len(codes), np.int64)
    offset = 0
    for c in range(len(keys)):
        idx = np.flatnonzero(codes == c)
        idx = idx[rng.permutation(len(idx))]
        fold_of[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return [np.flatnonzero(fold_of == f) for f in range(k)]


@dataclass
class Examples:
    """Labelled example embeddings: unit vectors and, per example, its label index (single) or a 0/1
    row over the labels (multi)."""

    vectors: np.ndarray  # [n, dim] float32
    targets: np.ndarray  # [n] int64 or [n, labels] bool
    multi: bool

    def __len__(self) -> int:
        return len(self.vectors)

    def groups(self) -> list:
        """The stratification key of each example (its label, or its set of labels)."""
        if self.multi:
            return [tuple(np.flatnonzero(row)) for row in self.targets]
        return self.targets.tolist()

    def torch_targets(self, idx: np.ndarray | slice = slice(None)) -> torch.Tensor:
        t = self.targets[idx]
        return torch.from_numpy(t.astype(np.float32)) if self.multi else torch.from_numpy(t.astype(np.int64))


@dataclass
class Fit:
    """Fitted weights (unit scale, [labels, dim]) and biases, and how the strength was chosen."""

    weights: np.ndarray
    bias: np.ndarray
    strength: float  # in units of the logit scale; inf = the zero-shot weights
    cv_accuracy: float | None
    folds: int
    cv: dict = field(default_factory=dict)  # candidate name -> cross-validated accuracy
    cv_logits: np.ndarray | None = None  # out-of-fold logits, each label at its strength (multi: thresholds)
    prior: str = "text"  # "text": centred on the label text; "none": a plain probe (the text did not help)
    label_strengths: list[float] | None = None  # per label, where its own examples overruled `strength`


def predictions_correct(logits: torch.Tensor, targets: torch.Tensor, multi: bool,
                        cuts: torch.Tensor | None = None) -> torch.Tensor:
    """Per example: 1 when the top label is right (single), else the fraction of right yes/no calls."""
    if multi:
        return ((logits >= cuts[None, :]) == (targets > 0.5)).float().mean(dim=1)
    return (logits.argmax(dim=1) == targets).float()


def held_out_parts(logits: torch.Tensor, targets: torch.Tensor, multi: bool, shift: float) -> torch.Tensor:
    """[n, labels] cross-entropy of held-out predictions (the proper score that picks the strength), split
    by label: multi-label, each label's yes/no term; single-label, the whole term under the true label."""
    if multi:
        return F.binary_cross_entropy_with_logits(logits + shift, targets, reduction="none")
    ce = F.cross_entropy(logits, targets, reduction="none")
    return torch.zeros_like(logits).scatter_(1, targets[:, None], ce[:, None])


def candidates(strengths: Sequence[float]) -> list[tuple[bool, float]]:
    """(centred on the text?, strength) pairs to cross-validate: the text-centred path strongest first
    (the default always among them), then the plain-probe path."""
    text = sorted({*strengths, DEFAULT_STRENGTH}, reverse=True)
    return [(True, float(t)) for t in text] + [(False, float(t)) for t in PROBE_STRENGTHS]


def fit(prior: np.ndarray, examples: Examples, scale: float, cuts: np.ndarray | None = None,
        shift: float = 0.0, strengths: Sequence[float] = STRENGTHS, seed: int = 0) -> Fit:
    """Fit the prior-centred classifier. prior: [labels, dim] unit-scale text weights (multi mode: the
    zero-shot multi-label weights); cuts: multi mode, each label's logit cut (logit(threshold) - shift);
    shift: the model's own logit bias (SigLIP)."""
    with one_thread():
        return _fit(prior, examples, scale, cuts, shift, strengths, seed)


def _fit(prior, examples, scale, cuts, shift, strengths, seed) -> Fit:
    labels, dim = prior.shape
    prior_t = torch.cat([torch.from_numpy(np.asarray(prior, np.float32)), torch.zeros(labels, 1)], dim=1)
    xa = augmented(examples.vectors)
    multi = examples.multi
    cut_t = torch.from_numpy(np.asarray(cuts, np.float32)) if multi else None
    groups = examples.groups()
    smallest = min(np.unique(np.array([str(g) for g in groups]), return_counts=True)[1])
    folds = min(MAX_FOLDS, int(smallest))
    centred, strength, per_label, cv_accuracy, cv, oof = True, DEFAULT_STRENGTH, None, None, {}, None
    if folds >= 2:
        cands = candidates(strengths)
        parts, right, logits = cross_validate(xa, prior_t, examples, scale, multi, shift, cut_t, cands,
                                              stratified_folds(groups, folds, seed))
        j = choose(parts.sum(dim=2), cands.index((True, DEFAULT_STRENGTH)))
        centred, strength = cands[j]
        cv = {("" if c else "probe ") + f"{s:g}": float(a) for (c, s), a in zip(cands, right.mean(dim=1))}
        oof = logits[j]
        if centred:
            per_label, oof = per_label_strengths(parts, logits, examples, cands, j)
        truth = examples.torch_targets()
        cv_accuracy = float(predictions_correct(oof, truth, multi, cut_t).mean())
        oof = oof.numpy()
    else:
        folds = 0
    centre = prior_t if centred else torch.zeros_like(prior_t)
    problem = Problem.of(xa, centre, examples.torch_targets(), scale, multi, shift)
    chosen = torch.tensor(per_label if per_label is not None else [strength] * labels) * scale
    w = (centre + problem.solve(chosen) @ problem.basis.T).numpy()
    overruled = per_label if per_label is not None and any(s != strength for s in per_label) else None
    return Fit(np.ascontiguousarray(w[:, :dim]), w[:, dim].copy(), float(strength), cv_accuracy, folds, cv,
               oof, "text" if centred else "none", overruled)


def per_label_strengths(parts: torch.Tensor, logits: torch.Tensor, examples: Examples,
                        cands: list[tuple[bool, float]], chosen: int) -> tuple[list[float], torch.Tensor]:
    """Per label, the text-centred strength its own examples' held-out loss picks, by the same rule with
    the overall choice as default (a label the prompts read well keeps a stronger prior than one they
    misread); and the out-of-fold logits, each label's column from its own strength."""
    text = [i for i, (c, _) in enumerate(cands) if c]
    out, oof = [], logits[chosen].clone()
    for label in range(parts.shape[2]):
        rows = (torch.ones(parts.shape[1], dtype=torch.bool) if examples.multi
                else torch.from_numpy(examples.targets == label))
        k = text[choose(parts[text][:, rows, label], text.index(chosen))]
        out.append(cands[k][1])
        oof[:, label] = logits[k, :, label]
    return out, oof


def cross_validate(xa, prior_t, examples: Examples, scale: float, multi: bool, shift: float, cut_t,
                   cands: Sequence[tuple[bool, float]], held: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Out-of-fold (loss [candidates, n, labels], right [candidates, n], logits [candidates, n, labels])."""
    n, labels = len(xa), prior_t.shape[0]
    parts, right = torch.zeros(len(cands), n, labels), torch.zeros(len(cands), n)
    logits = torch.zeros(len(cands), n, labels)
    for test in held:
        train = np.setdiff1d(np.arange(n), test)
        truth = examples.torch_targets(test)
        basis = None
        for centred in (True, False):
            idx = [i for i, c in enumerate(cands) if c[0] == centred]
            centre = prior_t if centred else torch.zeros_like(prior_t)
            problem = Problem.of(xa[train], centre, examples.torch_targets(train), scale, multi, shift, basis)
            basis = problem.basis
            for j, delta in zip(idx, problem.path([cands[i][1] * scale for i in idx], CV_MAX_ITER)):
                lg = scale * (xa[test] @ (centre + delta).T)
                logits[j, test] = lg
                right[j, test] = predictions_correct(lg, truth, multi, cut_t)
                parts[j, test] = held_out_parts(lg, truth, multi, shift)
    return parts, right, logits


def choose(losses: torch.Tensor, default: int) -> int:
    """The candidate with the lowest mean held-out loss when it beats the default's by more than one
    standard error of the paired per-example difference (few examples cannot tell); else the default."""
    if losses.shape[1] < MIN_CV_EXAMPLES:
        return default
    mean = losses.mean(dim=1)
    best = int(torch.argmin(mean))
    diff = (losses[best] - losses[default]).double()
    se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    return best if float(diff.mean()) < -se else default


def best_cuts(logits: np.ndarray, targets: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Per label, the logit cut that maximises F1 on out-of-fold logits (midway between neighbours);
    the default where a label's F1 cannot be measured."""
    out = np.array(default, np.float64)
    for j in range(logits.shape[1]):
        z, t = logits[:, j].astype(np.float64), targets[:, j].astype(bool)
        if t.all() or not t.any():
            continue
        order = np.argsort(-z, kind="stable")
        zs, ts = z[order], t[order]
        tp = np.cumsum(ts)
        f1 = 2 * tp / (np.arange(1, len(z) + 1) + t.sum())  # predicting the first k as positive
        k = int(np.argmax(f1))
        out[j] = zs[k] if k + 1 == len(zs) else 0.5 * (zs[k] + zs[k + 1])
    return out


def check_examples(labels: Sequence[str], examples: Examples) -> None:
    """PixdexError for examples no classifier can learn from: one label only, a label without examples,
    a multi-label label that every example has."""
    if not len(examples):
        return
    if examples.multi:
        pos = examples.targets.sum(axis=0)
        for j, label in enumerate(labels):
            if pos[j] == 0:
                raise PixdexError(f"label {label!r} has no examples")
            if pos[j] == len(examples):
                raise PixdexError(f"label {label!r}: every example has it; give examples without it too")
        return
    if len(labels) < 2:
        raise PixdexError(f"one class only ({labels[0]!r}): examples need at least two labels "
                          "(or use --mode multi for a yes/no tag)")
    counts = np.bincount(examples.targets, minlength=len(labels))
    for j, label in enumerate(labels):
        if counts[j] == 0:
            raise PixdexError(f"label {label!r} has no examples (every label needs at least one)")


# ---- a label set taught by examples ------------------------------------------------------------------
@dataclass
class Taught:
    """A label set (classify.tagging.LabelSet) plus what its examples taught it: scores like the zero-shot
    one through the same kernels, with the fitted weights and per-label logit offsets. Without examples
    (fit is None) every number comes from the label set itself."""

    base: object  # the LabelSet: labels, embeddings, scoring, templates, background, weights(mode)
    mode: str
    fit: Fit | None = None
    thresholds: np.ndarray | None = None  # multi mode: score threshold per label (chosen on the examples)
    counts: dict = field(default_factory=dict)  # label -> number of examples

    @property
    def labels(self) -> list[str]:
        return self.base.labels

    @property
    def embeddings(self) -> np.ndarray:
        return self.base.embeddings

    @property
    def scoring(self):
        return self.base.scoring

    @property
    def templates(self) -> list[str]:
        return self.base.templates

    def _check(self, mode: str) -> None:
        if self.fit is not None and mode != self.mode:
            raise PixdexError(f"this classifier was taught for {self.mode}-label tagging, not {mode}-label")

    def weights(self, mode: str) -> tuple[np.ndarray, float]:
        """([dim, labels] float32 weights with logit_scale folded in, the model's scalar bias)."""
        self._check(mode)
        if self.fit is None:
            return self.base.weights(mode)
        w = np.ascontiguousarray(self.fit.weights.T * np.float32(self.scoring.logit_scale), dtype=np.float32)
        return w, self.scoring.bias

    def offsets(self, mode: str) -> np.ndarray | None:
        """[labels] float32 logit offsets (the fitted biases), None without examples."""
        self._check(mode)
        if self.fit is None:
            return None
        return (self.fit.bias * np.float32(self.scoring.logit_scale)).astype(np.float32)

    def info(self) -> dict:
        """What was taught, for summaries and the stored record."""
        f = self.fit
        return {"method": METHOD if f is not None else "zero-shot", "mode": self.mode,
                "prior": None if f is None else f.prior,
                "examples": dict(self.counts),
                "strength": None if f is None or math.isinf(f.strength) else f.strength,
                "cv_accuracy": None if f is None else f.cv_accuracy, "cv_folds": 0 if f is None else f.folds}


def teach(label_set, vectors: np.ndarray, targets: np.ndarray, mode: str = "single",
          thresholds: np.ndarray | None = None, seed: int = 0) -> Taught:
    """The label set taught by examples (unit `vectors` with `targets`: label indices for single mode, a
    0/1 [examples, labels] matrix for multi). No examples: the zero-shot label set, unchanged."""
    multi = mode == "multi"
    labels = list(label_set.labels)
    if not len(vectors):
        return Taught(label_set, mode, None, thresholds)
    examples = Examples(np.asarray(vectors, np.float32), np.asarray(targets, bool if multi else np.int64),
                        multi)
    check_examples(labels, examples)
    if examples.multi:
        counts = dict(zip(labels, examples.targets.sum(axis=0).astype(int).tolist()))
    else:
        counts = dict(zip(labels, np.bincount(examples.targets, minlength=len(labels)).tolist()))
    w, bias = label_set.weights(mode)
    scale = float(label_set.scoring.logit_scale)
    prior = (w.T / np.float32(scale)).astype(np.float32)
    cuts = None
    if multi:
        thr = np.full(len(labels), 0.5) if thresholds is None else np.asarray(thresholds, np.float64)
        with np.errstate(divide="ignore"):
            cuts = (np.log(thr) - np.log1p(-thr)) - bias
    f = fit(prior, examples, scale, cuts, bias if multi else 0.0, seed=seed)
    if multi:
        if f.cv_logits is not None:
            cuts = best_cuts(f.cv_logits, examples.targets, cuts)
        thresholds = 1.0 / (1.0 + np.exp(-(cuts + bias)))
    return Taught(label_set, mode, f, thresholds, counts)
