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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from classify.examples import ExamplePlan, as_refs, example_vectors, plan_examples
from classify.fewshot import Examples, Taught, check_examples, teach
from classify.prompts import DEFAULT_BACKGROUND, LabelSet, label_thresholds, resolve_templates
from classify.records import tagger_record
from classify.scoring import (
    above_threshold_block,
    above_threshold_block_torch,
    logit,
    top_k_block,
    top_k_block_torch,
)
from classify.sinks import FileSink, TagBlock, TagColumns, block_table
from classify.suggest import check_suggest, suggest_examples
from indexer.encoder import pick_device, store_encoder
from indexer.errors import PixdexError
from indexer.params import BATCH_ROWS, SCORE_THRESHOLD, TOP_K, WORKERS, check_device
from indexer.store import BASE_COLUMNS, Store, StoreWriter

MODES = ("single", "multi")
DEFAULT_BLOCK_ROWS = 4096
TAG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    off = label_set.offsets(mode)
    n_labels = len(label_set.labels)
    if mode == "single":
        k = min(top_k or 1, n_labels)
    else:
        thr = label_thresholds(label_set.labels, None) if thresholds is None else np.asarray(thresholds)
        cuts = (logit(thr) - bias).astype(np.float32)
    if dev.type != "cpu":
        wt = torch.from_numpy(w).to(dev)
        offt = torch.from_numpy(off).to(dev) if off is not None else None
        workers = 1
        if mode == "multi":
            ct = torch.from_numpy(cuts).to(dev)
    elif workers is None:
        workers = min(2, os.cpu_count() or 1)

    def work(item: tuple[np.ndarray, np.ndarray]) -> TagBlock:
        ids, emb = item
        if mode == "single":
            if dev.type != "cpu":
                idx, sc = top_k_block_torch(emb, wt, label_set.scoring, k, offt)
            else:
                idx, sc = top_k_block(emb, w, label_set.scoring, k, off)
            offsets = np.arange(0, len(ids) * k + 1, k, dtype=np.int64)
            return TagBlock(ids, offsets, idx.reshape(-1), sc.reshape(-1))
        if dev.type != "cpu":
            offsets, idx, sc = above_threshold_block_torch(emb, wt, ct, bias, top_k, offt)
        else:
            offsets, idx, sc = above_threshold_block(emb, w, cuts, bias, top_k, off)
        return TagBlock(ids, offsets, idx, sc)

    bar = tqdm(total=store.count, unit="img", unit_scale=True, desc="tagging", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for block in ordered_map(work, store.iter_embeddings(batch_rows), workers):
            bar.update(len(block.ids))
            yield block
    finally:
        bar.close()


def check_tag_name(name: str, columns: Iterable[str] = ()) -> str:
    """A tag set name must be an identifier, not ending in _score, whose columns (NAME, NAME_score) shadow
    no base column and none of `columns` (the store's others), compared case-insensitively like --where."""
    if not isinstance(name, str) or not TAG_NAME.match(name):
        raise PixdexError(f"--save-as {name!r}: use letters, digits and _ (not starting with a digit), "
                          "so that search --where can name it")
    if name.lower().endswith("_score"):
        raise PixdexError(f"--save-as {name!r}: a tag set name may not end in _score "
                          "(its scores go in NAME_score)")
    taken = {c.lower(): c for c in [*BASE_COLUMNS, *columns]}
    for new in (name, f"{name}_score"):
        if new.lower() in taken:
            raise PixdexError(f"--save-as {name!r} would shadow the store's column {taken[new.lower()]!r}")
    return name


def store_columns(store: Store, replacing: str | None = None) -> list[str]:
    """Every metadata column of the store except those of the tag set `replacing`
    (file schemas only, no rows)."""
    files = [s["metadata"] for s in store.manifest["shards"]]
    files += [rel for name, rel in sorted((store.manifest.get("tags") or {}).items()) if name != replacing]
    cols: set[str] = set()
    for rel in files:
        try:
            cols.update(pq.read_schema(store.path / rel).names)
        except FileNotFoundError:
            raise store.missing(rel) from None
        except (pa.ArrowException, OSError) as exc:
            raise store.damaged(rel, f"not a readable parquet file ({str(exc).splitlines()[0]})") from None
    return sorted(cols - {"id"} | {"id"})


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
    classifier: dict | None = None  # taught by examples: method, examples per label, strength, cv accuracy
    suggestions: list = field(default_factory=list)  # images worth labelling next (suggest=N)

    def line(self) -> str:
        where = ", ".join(x for x in (self.out and f"wrote {self.out}",
                                       self.save_as and f"saved as tag set '{self.save_as}'") if x)
        return (f"tagged {self.tagged} of {self.images} images against {self.labels} labels "
                f"({self.mode}-label, {self.templates} template{'s' * (self.templates != 1)}"
                f"{self.taught()}) in "
                f"{self.seconds:.1f} s ({self.images_per_second:,.0f} images/s)"
                + (f"; {where}" if where else ""))

    def taught(self) -> str:
        if not self.classifier:
            return ""
        c = self.classifier
        cv = f", cross-validated accuracy {c['cv_accuracy']:.3f}" if c.get("cv_accuracy") is not None else ""
        probe = "; label text dropped for a plain probe" if c.get("prior") == "none" else ""
        return f", taught by {sum(c['examples'].values())} examples{cv}{probe}"

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


def check_example_plan(examples, labels: Sequence[str], store: Store, mode: str) -> ExamplePlan | None:
    """Labelled examples checked against labels and store (no image encoded yet); None without any."""
    refs = as_refs(examples)
    if not refs:
        return None
    plan = plan_examples(refs, labels, store, multi=mode == "multi")
    check_examples(labels, Examples(np.zeros((len(plan), 0), np.float32), plan.targets(), mode == "multi"))
    return plan


def teach_label_set(store: Store, encoder, label_set: LabelSet, plan: ExamplePlan | None, mode: str,
                    thresholds: np.ndarray | None) -> Taught:
    """The label set taught by the planned examples (no examples: the zero-shot label set, unchanged)."""
    if plan is None:
        return Taught(label_set, mode, None, thresholds)
    return teach(label_set, example_vectors(plan, store, encoder), plan.targets(), mode, thresholds)


def check_coverage(store: Store, ids: np.ndarray, name: str) -> None:
    """A tag set is saved only when it tags every live item of the store as it is now: a run that saw
    fewer (a store changed meanwhile, a bug) must not replace a complete tag set with a partial one."""
    live = store.ids()
    missing = np.setdiff1d(live, ids, assume_unique=True)
    if len(missing):
        raise PixdexError(f"tag set '{name}' not saved: it covers {len(live) - len(missing)} of the store's "
                          f"{len(live)} items (did the store change while tagging? run it again)")


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
    examples=None,
    suggest: int = 0,
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
    examples: labelled examples (a CSV of `label,id_or_path` rows, pairs or {label: [...]}, see
    classify.examples) teach the classifier (classify.fewshot); none: zero-shot. suggest=N lists the N
    images worth labelling next in summary.suggestions (classify.suggest).
    """
    from classify.prompts import check_labels

    check_tag_params(mode, top_k, threshold, batch_rows, workers, device)
    st = store if isinstance(store, Store) else Store.open(store)
    labels = check_labels(labels, allow_duplicates=False)
    if save_as is not None:
        check_tag_name(save_as, store_columns(st, replacing=save_as))
    tpl = resolve_templates(template, templates, ensemble)
    thr = label_thresholds(labels, threshold, thresholds) if mode == "multi" else None
    plan = check_example_plan(examples, labels, st, mode)
    suggest = check_suggest(suggest)
    sink = FileSink(out) if out is not None else None  # checks the path; writes nothing yet
    enc = store_encoder(st, model, device)
    label_set = teach_label_set(st, enc,
                                LabelSet.build(enc, labels, tpl, background if mode == "multi" else None),
                                plan, mode, thr)
    if mode == "multi":
        thr = label_set.thresholds
    if mode == "single" and top_k is None:
        top_k = 1
    lists = mode == "multi" or (top_k or 1) > 1
    label_arr = pa.array(labels, pa.string())
    tags = TagColumns(save_as, multi=mode == "multi") if save_as is not None else None
    summary = TagSummary(str(st.path), mode, len(labels), len(tpl), out=str(out) if out else None,
                         save_as=save_as,
                         classifier=label_set.info() if label_set.fit is not None else None)
    counts: Counter = Counter()
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
                table = block_table(block, label_arr, st.path_array(block.ids), lists)
                if sink is not None:
                    sink.write(table)
                if emit is not None:
                    emit(table)
        if sink is not None and summary.images == 0:  # an empty store still gets a file with the columns
            empty = TagBlock(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int32),
                             np.zeros(0, np.float32))
            sink.write(block_table(empty, label_arr, pa.array([], pa.string()), lists))
        ok = True
    finally:
        if sink is not None:
            sink.close(ok)
    if tags is not None:
        record = tagger_record(label_set, mode, thr, top_k, st.model)
        with StoreWriter(st.path) as writer:
            table = tags.table()
            check_coverage(writer.snapshot(), table["id"].to_numpy(), save_as)
            writer.write_tags(save_as, table)
            writer.write_tagger(save_as, record)
    summary.seconds = time.perf_counter() - start
    summary.images_per_second = summary.images / summary.seconds if summary.seconds > 0 else 0.0
    summary.top_labels = {labels[i]: c for i, c in counts.most_common(10)}
    if suggest:
        picks = suggest_examples(st, label_set, suggest, mode, thr, exclude=plan.stored_ids() if plan else ())
        summary.suggestions = [s.to_dict() for s in picks]
    return summary
