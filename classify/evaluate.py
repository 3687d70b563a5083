"""Zero-shot accuracy of a store's model against ground truth, from the stored embeddings.

Truth is a CSV (a `file` column relative to the CSV's folder, plus the label column) or a
folder-per-class dataset (DIR/<class>/<image>). Rows join to the store by resolved absolute path.
A truth value may hold several labels joined by ';' (e.g. two objects in one image): a
prediction counts as correct when it is any of them; such rows are left out of the per-class
precision/recall and the confusion matrix, which need exactly one true class.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from classify.prompts import LabelSet, check_labels, resolve_templates
from classify.scoring import top_k_block
from indexer.decode import looks_like_image
from indexer.encoder import store_encoder
from indexer.errors import PixdexError
from indexer.params import check_device, check_output_folder
from indexer.store import Store

EVAL_BLOCK = 65536


@dataclass
class ClassStats:
    label: str
    support: int  # single-label truth rows of this class
    predicted: int  # single-label rows predicted as this class
    precision: float | None
    recall: float | None


@dataclass
class EvalReport:
    """Accuracy figures; written as metrics.json (+ confusion.png) when an output folder is given."""

    store: str
    truth: str
    column: str | None
    labels: list[str]
    templates: int
    evaluated: int = 0  # truth rows found in the store
    missing: int = 0  # truth rows whose file is not in the store
    multi_label_rows: int = 0  # rows with several true labels (accuracy only)
    unknown_truth: int = 0  # rows whose true label is not among the candidate labels
    top1: float = 0.0
    top5: float = 0.0
    per_class: list[ClassStats] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # rows: true class, columns: predicted
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [(f"{self.evaluated} images ({self.missing} truth rows not in the store, "
                  f"{self.multi_label_rows} with several labels), {len(self.labels)} labels: "
                  f"top-1 {self.top1:.3f}  top-5 {self.top5:.3f}"),
                 f"{'label':20s} {'support':>7s} {'precision':>9s} {'recall':>7s}"]
        for c in self.per_class:
            p = "-" if c.precision is None else f"{c.precision:.3f}"
            r = "-" if c.recall is None else f"{c.recall:.3f}"
            lines.append(f"{c.label[:20]:20s} {c.support:7d} {p:>9s} {r:>7s}")
        lines += [f"{k}: {v}" for k, v in self.files.items()]
        return "\n".join(lines)


# ---- truth --------------------------------------------------------------------------------------------
def real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def read_truth(truth: str | os.PathLike, column: str | None = "shape") -> dict[str, list[str]]:
    """{resolved image path: [true labels]} from a labels CSV or a folder-per-class directory."""
    t = Path(truth).expanduser()
    if t.is_dir():
        return folder_truth(t)
    if not t.is_file():
        raise PixdexError(f"truth {t} does not exist (give a labels CSV or a folder-per-class directory)")
    with t.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "file" not in fields:
            raise PixdexError(f"truth CSV {t} has no 'file' column (columns: {', '.join(fields) or 'none'})")
        if column not in fields:
            raise PixdexError(f"truth CSV {t} has no column {column!r} (columns: {', '.join(fields)})")
        out = {}
        for row in reader:
            values = list(dict.fromkeys(v.strip() for v in (row[column] or "").split(";") if v.strip()))
            if values:
                out[real(t.parent / row["file"])] = values
    if not out:
        raise PixdexError(f"truth CSV {t} has no labelled rows")
    return out


def folder_truth(root: Path) -> dict[str, list[str]]:
    """DIR/<class>/.../<image> -> class (hidden folders skipped)."""
    out = {}
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(cls):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                p = Path(dirpath) / name
                if not name.startswith(".") and looks_like_image(p):
                    out[real(p)] = [cls.name]
    if not out:
        raise PixdexError(f"truth folder {root} has no class subfolders with images")
    return out


# ---- evaluation ---------------------------------------------------------------------------------------
def evaluate_store(
    store: str | os.PathLike | Store,
    truth: str | os.PathLike,
    column: str | None = "shape",
    labels: Sequence[str] | None = None,
    template: str | None = None,
    templates: Sequence[str] | None = None,
    ensemble: str | None = None,
    out_dir: str | os.PathLike | None = None,
    model: str | None = None,
    device: str = "auto",
) -> EvalReport:
    """Top-1/top-5 accuracy, per-class precision/recall and a confusion matrix of single-label
    zero-shot classification over the stored embeddings of the truth's images."""
    if out_dir is not None:
        check_output_folder(out_dir, "out_dir")
    check_device(device)
    st = store if isinstance(store, Store) else Store.open(store)
    truth_map = read_truth(truth, column)
    if labels is None:
        labels = sorted({v for vs in truth_map.values() for v in vs})
    labels = check_labels(labels, allow_duplicates=False)
    tpl = resolve_templates(template, templates, ensemble)
    report = EvalReport(str(st.path), str(truth), None if Path(truth).is_dir() else column, labels, len(tpl))

    meta = st.metadata().select(["id", "path"]).to_pydict()
    by_path = {real(p): i for i, p in zip(meta["id"], meta["path"])
               if p and not p.startswith(("http:", "https:"))}
    found = [(by_path[p], vs) for p, vs in truth_map.items() if p in by_path]
    report.missing = len(truth_map) - len(found)
    if not found:
        raise PixdexError(f"none of the {len(truth_map)} truth images is in store {st.path} "
                          "(paths are compared after resolving them)")
    found.sort()
    ids = np.array([i for i, _ in found], np.int64)
    truths = [vs for _, vs in found]

    enc = store_encoder(st, model, device)
    label_set = LabelSet.build(enc, labels, tpl, background=None)
    weights, _ = label_set.weights("single")
    k = min(5, len(labels))
    top = np.concatenate([top_k_block(st.vectors(ids[i : i + EVAL_BLOCK]), weights, label_set.scoring, k)[0]
                          for i in range(0, len(ids), EVAL_BLOCK)])
    fill_metrics(report, top, truths)
    if out_dir is not None:
        write_outputs(report, Path(out_dir), ids, st.paths(ids), truths, top)
    return report


def fill_metrics(report: EvalReport, top: np.ndarray, truths: list[list[str]]) -> None:
    """Accuracy from [rows, k] predicted label indices; P/R and confusion from single-label rows."""
    labels = report.labels
    pos = {x: i for i, x in enumerate(labels)}
    true_sets = [{pos[v] for v in vs if v in pos} for vs in truths]
    report.evaluated = len(truths)
    report.unknown_truth = sum(1 for vs in truths if not all(v in pos for v in vs))
    report.multi_label_rows = sum(1 for vs in truths if len(vs) > 1)
    report.top1 = float(np.mean([int(t[0]) in s for t, s in zip(top, true_sets)]))
    report.top5 = float(np.mean([bool(s & set(t.tolist())) for t, s in zip(top, true_sets)]))
    n = len(labels)
    cm = np.zeros((n, n), np.int64)
    for t, vs in zip(top, truths):
        if len(vs) == 1 and vs[0] in pos:
            cm[pos[vs[0]], int(t[0])] += 1
    report.confusion = cm.tolist()
    support, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    report.per_class = [
        ClassStats(x, int(support[i]), int(predicted[i]),
                   float(hits[i] / predicted[i]) if predicted[i] else None,
                   float(hits[i] / support[i]) if support[i] else None)
        for i, x in enumerate(labels)
    ]


def write_outputs(report: EvalReport, out_dir: Path, ids: np.ndarray, paths: list[str],
                  truths: list[list[str]], top: np.ndarray) -> None:
    """metrics.json, predictions.csv and confusion.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report.files = {"metrics": str(out_dir / "metrics.json"), "predictions": str(out_dir / "predictions.csv"),
                    "confusion": str(out_dir / "confusion.png")}
    with (out_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "truth", "predicted", "top5"])
        for i, p, vs, t in zip(ids.tolist(), paths, truths, top):
            w.writerow([i, p, ";".join(vs), report.labels[int(t[0])],
                        ";".join(report.labels[int(j)] for j in t)])
    plot_confusion(np.array(report.confusion), report.labels, out_dir / "confusion.png",
                   f"top-1 {report.top1:.3f}, {int(np.sum(report.confusion))} single-label images")
    (out_dir / "metrics.json").write_text(json.dumps(report.to_dict(), indent=2))


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> None:
    """A row-normalised confusion matrix PNG (counts written in the cells when it is small)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    size = min(4 + 0.45 * n, 40)
    fig = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8 if n > 20 else 10)
    ax.set_yticks(range(n), labels, fontsize=8 if n > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
