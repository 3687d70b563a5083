"""Where tags go: per-block results as tables, streamed to parquet/CSV/JSONL files
or the store's tag columns."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.errors import PixdexError
from indexer.params import check_output_file

OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
                  ".ndjson": "jsonl"}


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
                self._fh = open(self.tmp, "w", encoding="utf-8")  # closed in close()
            for row in table.to_pylist():
                self._fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False,
                                          default=_json_default) + "\n")

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
