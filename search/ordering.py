"""Ordering results by a metadata column (`--sort taken` / `-taken`) and attaching column values to hits.

Sorting reorders the relevant results only (the top k, or those above the threshold): relevance decides
what is shown, the column decides the order. Missing values go last in either direction; ties keep
relevance order, and each hit keeps its relevance rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from indexer.arrow_values import id_array, int64_array
from indexer.errors import PixdexError
from indexer.store import Store

MAX_COLUMNS = 16


@dataclass(frozen=True)
class Order:
    """A validated sort request: column name and direction."""

    column: str
    descending: bool = False


def parse_sort(sort: str | None, schema: pa.Schema) -> Order | None:
    """'taken', '-taken' or '+width' -> Order (None for no sort / relevance); unknown columns are refused."""
    if sort is None or sort in ("", "score", "relevance"):
        return None
    if not isinstance(sort, str):
        raise PixdexError(f"sort must be a column name such as 'taken' or '-taken', got {sort!r}")
    name = sort.strip()
    descending = name.startswith("-")
    name = name.lstrip("+-").strip()
    if name not in schema.names:
        raise PixdexError(
            f"cannot sort by {name!r}: no such column; available: score, {', '.join(schema.names)}"
        )
    typ = schema.field(name).type
    if pa.types.is_nested(typ):
        raise PixdexError(f"cannot sort by {name!r}: it holds lists ({typ})")
    return Order(name, descending)


def check_columns(columns: Sequence[str] | None, schema: pa.Schema) -> list[str]:
    """Names of metadata columns to attach to each hit, each checked against the store."""
    if columns is None:
        return []
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise PixdexError("columns must be a list of column names")
    if len(columns) > MAX_COLUMNS:
        raise PixdexError(f"{len(columns)} columns exceed the limit of {MAX_COLUMNS}")
    for c in columns:
        if c not in schema.names:
            raise PixdexError(f"unknown column {c!r}; available: {', '.join(schema.names)}")
    return list(dict.fromkeys(columns))


def column_values(store: Store, ids: Sequence[int], columns: Sequence[str]) -> list[dict]:
    """{column: JSON-friendly value} per id (times as ISO 8601, `taken` with its UTC offset when known)."""
    if not columns or not len(ids):
        return [{} for _ in ids]
    meta = store.metadata()
    all_ids = id_array(meta["id"])
    pos = np.searchsorted(all_ids, np.asarray(ids, np.int64))  # metadata rows are in id order
    wanted = list(columns) + (
        ["taken_offset"] if "taken" in columns and "taken_offset" in meta.column_names else []
    )
    picked = meta.select(wanted).take(int64_array(pos)).to_pylist()
    out = []
    for row in picked:
        values = {c: _plain(row[c]) for c in columns}
        if values.get("taken") and row.get("taken_offset"):
            values["taken"] += row["taken_offset"]
        out.append(values)
    return out


def order_hits(hits: list, values: list[dict], order: Order | None) -> list:
    """Hits reordered by the order's column (missing values last), or unchanged without one."""
    if order is None:
        return hits
    present = [(h, v) for h, v in zip(hits, values) if v.get(order.column) is not None]
    missing = [(h, v) for h, v in zip(hits, values) if v.get(order.column) is None]
    present.sort(key=lambda hv: hv[1][order.column], reverse=order.descending)  # stable: ties by relevance
    return [h for h, _ in present + missing]


def _plain(v):
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
