"""Saved taggers: tag sets stored with their classifier record (classify --save-as) applied again.

`refresh_tag_sets` tags the items a store gained since a tag set was saved (and drops removed ones),
leaving every earlier row as it was; `pixdex index` runs it after each job. `classify_images` applies a
saved tagger (`STORE:NAME`) to image files with the store's model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classify.records import SavedTagger
from classify.scoring import above_threshold_block, logit, top_k_block
from classify.tagging import TagBlock, TagColumns
from indexer.errors import PixdexError
from indexer.store import Store, StoreWriter

REFRESH_BLOCK = 4096


def load_tagger(store: Store, name: str) -> SavedTagger:
    """The saved tagger `name` of the store, checked against the store's model."""
    tagger = SavedTagger.from_record(name, store.tagger(name))
    tagger.check_model(store.model["fingerprint"])
    return tagger


def tag_vectors(tagger: SavedTagger, ids: np.ndarray, emb: np.ndarray) -> TagBlock:
    """Tags of some embeddings, computed exactly as the tagging run that saved the tagger did."""
    w, bias = tagger.weights(tagger.mode)
    off = tagger.offsets(tagger.mode)
    if tagger.mode == "single":
        k = min(tagger.top_k or 1, len(tagger.labels))
        idx, sc = top_k_block(emb, w, tagger.scoring, k, off)
        return TagBlock(ids, np.arange(0, len(ids) * k + 1, k, dtype=np.int64), idx.reshape(-1),
                        sc.reshape(-1))
    cuts = (logit(tagger.thresholds) - bias).astype(np.float32)
    offsets, idx, sc = above_threshold_block(emb, w, cuts, bias, tagger.top_k, off)
    return TagBlock(ids, offsets, idx, sc)


@dataclass
class Refreshed:
    """What refresh_tag_sets did to one tag set."""

    name: str
    tagged: int  # new items tagged
    dropped: int  # rows of removed items dropped

    def line(self) -> str:
        return f"tag set '{self.name}': tagged {self.tagged} new images" + (
            f", dropped {self.dropped} removed" if self.dropped else "")


def refresh_tag_sets(store: str | os.PathLike | Store, names: Sequence[str] | None = None) -> list[Refreshed]:
    """Tag the items each saved tagger has not seen yet (only those: earlier rows stay as stored)."""
    st = store if isinstance(store, Store) else Store.open(store)
    live = st.ids()
    updates, done = [], []
    for name in names if names is not None else st.taggers():
        tagger = load_tagger(st, name)
        table = st.tag_table(name)
        have = table["id"].to_numpy()
        new = np.setdiff1d(live, have)
        keep = np.isin(have, live)
        if not len(new) and keep.all():
            continue
        cols = TagColumns(name, multi=tagger.mode == "multi")
        labels = pa.array(tagger.labels, pa.string())
        for start in range(0, len(new), REFRESH_BLOCK):
            chunk = new[start : start + REFRESH_BLOCK]
            cols.add(tag_vectors(tagger, chunk, st.vectors(chunk, cache=False)), labels)
        fresh = cols.table()
        old = table.filter(pa.array(keep)) if not keep.all() else table
        merged = pa.concat_tables([old, fresh.cast(old.schema)]) if len(fresh) else old
        merged = merged.take(pc.sort_indices(merged, [("id", "ascending")]))
        updates.append((name, merged))
        done.append(Refreshed(name, int(len(new)), int((~keep).sum())))
    if updates:
        with StoreWriter(st.path) as writer:
            for name, table in updates:
                writer.write_tags(name, table)
    return done


def parse_tagger_spec(spec: str) -> tuple[str, str]:
    """'STORE:NAME' -> (store, name); the name follows the last colon."""
    store, sep, name = str(spec).rpartition(":")
    if not sep or not store or not name:
        raise PixdexError(f"--tagger {spec!r}: use STORE:NAME "
                          f"(a store and the name of a tag set saved in it)")
    return store, name


def classify_images(spec: str, images: Sequence, top_k: int | None = None, device: str = "auto",
                    encoder=None) -> list[list[dict]]:
    """[{"score", "label"}, ...] per image from a saved tagger `STORE:NAME`: single-label taggers rank
    every label (top_k best), multi-label ones list the labels over their thresholds, best first."""
    from classify.classifier import ranked
    from indexer.encoder import get_encoder

    store_path, name = parse_tagger_spec(spec)
    st = Store.open(store_path)
    tagger = load_tagger(st, name)
    enc = encoder if encoder is not None else get_encoder(st.model["name"], device=device)
    st.check_model(enc.info)
    emb = enc.encode_images(list(images))
    w, bias = tagger.weights(tagger.mode)
    logits = emb.astype(np.float32) @ w
    if tagger.off is not None:
        logits += tagger.off
    out = []
    for row in logits.astype(np.float64):
        if tagger.mode == "single" and tagger.scoring.softmax:
            e = np.exp(row - row.max())
            out.append(ranked(e / e.sum(), tagger.labels, top_k))
            continue
        scores = 1.0 / (1.0 + np.exp(-(row + bias)))
        if tagger.mode == "single":
            out.append(ranked(scores, tagger.labels, top_k))
        else:
            hits = [i for i in range(len(row)) if scores[i] >= tagger.thresholds[i]]
            out.append(ranked(scores[hits], [tagger.labels[i] for i in hits], top_k))
    return out
