"""Bulk tagging of a stored collection from its stored embeddings (no image is re-encoded).

Streams the store's float16 shards a block at a time (bounded memory), scores every block against
all label embeddings with one float32 matmul (torch on a GPU, BLAS on CPU with blocks processed
by a small thread pool), and hands compact per-block results to sinks: an output file (parquet,
CSV, JSONL), the store itself (`save_as`), or stdout.

Modes
- single: the top-k labels per image with the pipeline's scores (softmax for CLIP, sigmoid for
  SigLIP); for CLIP-like models identical to running the pipeline on the same images.
- multi: every label whose score reaches its threshold. SigLIP: the model's own sigmoid. CLIP:
  sigmoid(logit_scale * (cos(label) - cos(background))) -- the pipeline's softmax over just
  {label, background prompt}; 0.5 means "more like the label than like the background".
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from classify.prompts import label_embeddings, resolve_templates
from classify.scoring import (
    Scoring,
    above_threshold_block,
    above_threshold_block_torch,
    logit,
    top_k_block,
    top_k_block_torch,
)
from indexer.encoder import Encoder, get_encoder, pick_device
from indexer.errors import PixdexError
from indexer.params import BATCH_ROWS, SCORE_THRESHOLD, TOP_K, WORKERS, check_device, check_output_file
from indexer.store import BASE_COLUMNS, Store, StoreWriter

MODES = ("single", "multi")
DEFAULT_THRESHOLD = 0.5
DEFAULT_BACKGROUND = "something"  # CLIP multi-label: the "none of these" label, through the same templates
DEFAULT_BLOCK_ROWS = 4096
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TAG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---- labels -----------------------------------------------------------------------------------------
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
        raise PixdexError(f"threshold {out[bad][0]} of label {labels[int(np.argmax(bad))]!r} is not in [0, 1]")
    return out


# ---- per-block results ------------------------------------------------------------------------------
@dataclass
class TagBlock:
    """Tags of a block of images as CSR: image i has labels[offsets[i]:offsets[i+1]] (best first)."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray  # int32 label indices
    scores: np.ndarray  # float32

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """(best label index or -1, its score or nan) per image."""
        has = self.counts > 0
        first = np.minimum(self.offsets[:-1], max(len(self.labels) - 1, 0))
        idx = np.where(has, self.labels[first] if len(self.labels) else -1, -1)
        sc = np.where(has, self.scores[first] if len(self.scores) else np.nan, np.nan)
        return idx.astype(np.int32), sc.astype(np.float32)


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """fn over items on `workers` threads, results in input order, at most 2*workers in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="pixdex-tag") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def iter_tag_blocks(
    store: Store,
    label_set: LabelSet,
    mode: str = "single",
    top_k: int | None = 1,
    thresholds: np.ndarray | None = None,
    device: str = "auto",
    batch_rows: int = DEFAULT_BLOCK_ROWS,
    workers: int | None = None,
    progress: bool = True,
) -> Iterator[TagBlock]:
    """Tag every live image of the store, a block at a time, in id order."""
    check_tag_params(mode, top_k, None, batch_rows, workers, device)
    if label_set.embeddings.shape[1] != store.dim:
        raise PixdexError(f"label embeddings have dim {label_set.embeddings.shape[1]}, store {store.path} "
                          f"has dim {store.dim}")
    dev = pick_device(device)
    w, bias = label_set.weights(mode)
    n_labels = len(label_set.labels)
    if mode == "single":
        k = min(top_k or 1, n_labels)
    else:
        thr = label_thresholds(label_set.labels, None) if thresholds is None else np.asarray(thresholds)
        cuts = (logit(thr) - bias).astype(np.float32)
    if dev.type != "cpu":
        wt = torch.from_numpy(w).to(dev)
        workers = 1
        if mode == "multi":
            ct = torch.from_numpy(cuts).to(dev)
    elif workers is None:
        workers = min(2, os.cpu_count() or 1)

    def work(item: tuple[np.ndarray, np.ndarray]) -> TagBlock:
        ids, emb = item
        if mode == "single":
            if dev.type != "cpu":
                idx, sc = top_k_block_torch(emb, wt, label_set.scoring, k)
            else:
                idx, sc = top_k_block(emb, w, label_set.scoring, k)
            offsets = np.arange(0, len(ids) * k + 1, k, dtype=np.int64)
            return TagBlock(ids, offsets, idx.reshape(-1), sc.reshape(-1))
        if dev.type != "cpu":
            offsets, idx, sc = above_threshold_block_torch(emb, wt, ct, bias, top_k)
        else:
            offsets, idx, sc = above_threshold_block(emb, w, cuts, bias, top_k)
        return TagBlock(ids, offsets, idx, sc)

    bar = tqdm(total=store.count, unit="img", unit_scale=True, desc="tagging", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for block in ordered_map(work, store.iter_embeddings(batch_rows), workers):
            bar.update(len(block.ids))
            yield block
    finally:
        bar.close()


# ---- paths ------------------------------------------------------------------------------------------
class ShardPaths:
    """Paths of ids, read one shard's metadata (id, path) at a time so memory stays bounded."""

    def __init__(self, store: Store):
        self.store = store
        shards = store.manifest["shards"]
        self.first_ids = np.array([s["first_id"] for s in shards], np.int64)
        self._k = -1
        self._ids = np.zeros(0, np.int64)
        self._paths = pa.array([], pa.string())

    def paths(self, ids: np.ndarray) -> pa.Array:
        if not len(ids):
            return pa.array([], pa.string())
        k = int(np.searchsorted(self.first_ids, ids[0], side="right") - 1)
        last = int(np.searchsorted(self.first_ids, ids[-1], side="right") - 1)
        if k != last:  # a block never spans shards, but stay correct if it does
            return pa.concat_arrays([self.paths(ids[ids < self.first_ids[k + 1]]),
                                     self.paths(ids[ids >= self.first_ids[k + 1]])])
        if k != self._k:
            t = pq.read_table(self.store.path / self.store.manifest["shards"][k]["metadata"], columns=["id", "path"])
            order = np.argsort(t["id"].to_numpy(), kind="stable")
            self._ids = t["id"].to_numpy()[order]
            self._paths = t["path"].combine_chunks().take(pa.array(order))
            self._k = k
        return self._paths.take(pa.array(np.searchsorted(self._ids, ids)))


# ---- sinks --------------------------------------------------------------------------------------------
def block_table(block: TagBlock, labels: pa.Array, paths: pa.Array, lists: bool) -> pa.Table:
    """id, path, label, score (the best label) and, when `lists`, labels/scores lists (best first)."""
    top, top_score = block.top()
    label_col = labels.take(pa.array(top, mask=top < 0))
    cols = {"id": pa.array(block.ids, pa.int64()), "path": paths, "label": label_col,
            "score": pa.array(top_score, pa.float32(), mask=top < 0)}
    if lists:
        offsets = pa.array(block.offsets.astype(np.int32))
        cols["labels"] = pa.ListArray.from_arrays(offsets, labels.take(pa.array(block.labels)))
        cols["scores"] = pa.ListArray.from_arrays(offsets, pa.array(block.scores, pa.float32()))
    return pa.table(cols)


def flatten_lists(table: pa.Table) -> pa.Table:
    """List columns as ';'-joined strings (for CSV and stdout); scores rounded to 6 digits."""
    for name in ("labels", "scores"):
        if name in table.column_names:
            col = table[name].combine_chunks()
            if name == "scores":
                offsets = pc.subtract(col.offsets, col.offsets[0])
                values = pc.cast(pc.round(col.flatten(), 6), pa.string())
                col = pa.ListArray.from_arrays(offsets, values)
            table = table.set_column(table.column_names.index(name), name, pc.binary_join(col, ";"))
    return table


class FileSink:
    """Streams block tables to parquet, CSV or JSONL (written to a temporary name, renamed when done)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        fmt = OUTPUT_FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise PixdexError(f"output {self.path}: unknown format; use .parquet, .csv or .jsonl")
        check_output_file(self.path, "output")
        self.format = fmt
        self.tmp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
        self._writer = None
        self._fh = None

    def write(self, table: pa.Table) -> None:
        if self.format == "parquet":
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp, table.schema)
            self._writer.write_table(table)
        elif self.format == "csv":
            import pyarrow.csv as pacsv

            table = flatten_lists(table)
            if self._writer is None:
                self._writer = pacsv.CSVWriter(self.tmp, table.schema)
            self._writer.write_table(table)
        else:
            import json

            if self._fh is None:
                self._fh = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
            for row in table.to_pylist():
                self._fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n")

    def close(self, ok: bool = True) -> None:
        for obj in (self._writer, self._fh):
            if obj is not None:
                obj.close()
        if ok and self.tmp.exists():
            os.replace(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()


def _json_default(x):
    return None if isinstance(x, float) and np.isnan(x) else str(x)


class TagColumns:
    """Collects the store's tag columns: single mode NAME (best label, string) and NAME_score (float);
    multi mode NAME (list of labels over threshold, best first) and NAME_score (their scores)."""

    def __init__(self, name: str, multi: bool):
        self.name, self.multi = name, multi
        self.parts: list[pa.Table] = []

    def add(self, block: TagBlock, labels: pa.Array) -> None:
        if self.multi:
            offsets = pa.array(block.offsets.astype(np.int32))
            value = pa.ListArray.from_arrays(offsets, labels.take(pa.array(block.labels)))
            score = pa.ListArray.from_arrays(offsets, pa.array(block.scores.astype(np.float64)))
        else:
            top, top_score = block.top()
            value = labels.take(pa.array(top, mask=top < 0))
            score = pa.array(top_score.astype(np.float64), pa.float64(), mask=top < 0)
        self.parts.append(pa.table({"id": pa.array(block.ids, pa.int64()), self.name: value,
                                    f"{self.name}_score": score}))

    def table(self) -> pa.Table:
        if not self.parts:
            value_type = pa.list_(pa.string()) if self.multi else pa.string()
            score_type = pa.list_(pa.float64()) if self.multi else pa.float64()
            return pa.table({"id": pa.array([], pa.int64()), self.name: pa.array([], value_type),
                             f"{self.name}_score": pa.array([], score_type)})
        return pa.concat_tables(self.parts).combine_chunks()


def check_tag_name(name: str) -> str:
    """A tag set name must be an identifier that does not shadow a metadata column."""
    if not TAG_NAME.match(name or ""):
        raise PixdexError(f"--save-as {name!r}: use letters, digits and _ (not starting with a digit), "
                          "so that search --where can name it")
    if name in BASE_COLUMNS or name.endswith("_score") and name[: -len("_score")] in BASE_COLUMNS:
        raise PixdexError(f"--save-as {name!r} would shadow the store's own column {name!r}")
    return name


# ---- the job --------------------------------------------------------------------------------------------
@dataclass
class TagSummary:
    """What a tagging run did, for the closing line and --json."""

    store: str
    mode: str
    labels: int
    templates: int
    images: int = 0
    tagged: int = 0  # images with at least one label (multi mode: above threshold)
    seconds: float = 0.0
    images_per_second: float = 0.0
    out: str | None = None
    save_as: str | None = None
    top_labels: dict = field(default_factory=dict)  # the most common best labels and their counts

    def line(self) -> str:
        where = ", ".join(x for x in (self.out and f"wrote {self.out}",
                                       self.save_as and f"saved as tag set '{self.save_as}'") if x)
        return (f"tagged {self.tagged} of {self.images} images against {self.labels} labels "
                f"({self.mode}-label, {self.templates} template{'s' * (self.templates != 1)}) in "
                f"{self.seconds:.1f} s ({self.images_per_second:,.0f} images/s)" + (f"; {where}" if where else ""))

    def to_dict(self) -> dict:
        return asdict(self)


def check_tag_params(mode: str, top_k: int | None, threshold: float | None, batch_rows: int,
                     workers: int | None, device: str) -> None:
    """Refuse a bad tagging parameter before any model loads or anything is written."""
    if mode not in MODES:
        raise PixdexError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if top_k is not None:
        TOP_K.check(top_k, "top_k")
    if threshold is not None:
        SCORE_THRESHOLD.check(threshold, "threshold")
    BATCH_ROWS.check(batch_rows, "batch_rows")
    if workers is not None:
        WORKERS.check(workers, "workers")
    check_device(device)


def check_coverage(store: Store, ids: np.ndarray, name: str) -> None:
    """A tag set is saved only when it tags every live item of the store as it is now: a run that saw
    fewer (a store changed meanwhile, a bug) must not replace a complete tag set with a partial one."""
    live = store.ids()
    missing = np.setdiff1d(live, ids, assume_unique=True)
    if len(missing):
        raise PixdexError(f"tag set '{name}' not saved: it covers {len(live) - len(missing)} of the store's "
                          f"{len(live)} items (did the store change while tagging? run it again)")


def open_encoder(store: Store, model: str | None = None, device: str = "auto") -> Encoder:
    """The store's model (or `model`), checked against the store's fingerprint."""
    enc = get_encoder(model or store.model["name"], device=device)
    store.check_model(enc.info)
    return enc


def tag_store(
    store: str | os.PathLike | Store,
    labels: Sequence[str],
    *,
    template: str | None = None,
    templates: Sequence[str] | None = None,
    ensemble: str | None = None,
    mode: str = "single",
    top_k: int | None = None,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
    background: str = DEFAULT_BACKGROUND,
    out: str | os.PathLike | None = None,
    save_as: str | None = None,
    emit: Callable[[pa.Table], None] | None = None,
    model: str | None = None,
    device: str = "auto",
    batch_rows: int = DEFAULT_BLOCK_ROWS,
    workers: int | None = None,
    progress: bool = True,
) -> TagSummary:
    """Tag a store's images against labels from their stored embeddings; write to `out`, to the store
    as tag columns (`save_as`), and/or pass each block's table to `emit`.

    single mode: top_k best labels per image (default 1). multi mode: labels scoring at least their
    threshold (`thresholds` per label, else `threshold`, else 0.5), at most top_k per image.
    """
    from classify.prompts import check_labels

    check_tag_params(mode, top_k, threshold, batch_rows, workers, device)
    st = store if isinstance(store, Store) else Store.open(store)
    labels = check_labels(labels, allow_duplicates=False)
    if save_as is not None:
        check_tag_name(save_as)
    tpl = resolve_templates(template, templates, ensemble)
    thr = label_thresholds(labels, threshold, thresholds) if mode == "multi" else None
    sink = FileSink(out) if out is not None else None  # checks the path; writes nothing yet
    enc = open_encoder(st, model, device)
    label_set = LabelSet.build(enc, labels, tpl, background if mode == "multi" else None)
    if mode == "single" and top_k is None:
        top_k = 1
    lists = mode == "multi" or (top_k or 1) > 1
    label_arr = pa.array(labels, pa.string())
    tags = TagColumns(save_as, multi=mode == "multi") if save_as is not None else None
    summary = TagSummary(str(st.path), mode, len(labels), len(tpl), out=str(out) if out else None, save_as=save_as)
    counts: Counter = Counter()
    paths = ShardPaths(st)
    start = time.perf_counter()
    ok = False
    try:
        for block in iter_tag_blocks(st, label_set, mode, top_k, thr, device, batch_rows, workers, progress):
            top, _ = block.top()
            summary.images += len(block.ids)
            summary.tagged += int((top >= 0).sum())
            for i, c in zip(*np.unique(top[top >= 0], return_counts=True)):
                counts[int(i)] += int(c)
            if tags is not None:
                tags.add(block, label_arr)
            if sink is not None or emit is not None:
                table = block_table(block, label_arr, paths.paths(block.ids), lists)
                if sink is not None:
                    sink.write(table)
                if emit is not None:
                    emit(table)
        if sink is not None and summary.images == 0:  # an empty store still gets a file with the columns
            empty = TagBlock(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
            sink.write(block_table(empty, label_arr, pa.array([], pa.string()), lists))
        ok = True
    finally:
        if sink is not None:
            sink.close(ok)
    if tags is not None:
        with StoreWriter(st.path) as writer:
            table = tags.table()
            check_coverage(writer.snapshot(), table["id"].to_numpy(), save_as)
            writer.write_tags(save_as, table)
    summary.seconds = time.perf_counter() - start
    summary.images_per_second = summary.images / summary.seconds if summary.seconds > 0 else 0.0
    summary.top_labels = {labels[i]: c for i, c in counts.most_common(10)}
    return summary
