"""Arrow arrays and scalars built from, and read into, numpy buffers.

pyarrow imports pandas (0.3-0.5 s, a cold query's whole budget) whenever it converts Python or numpy values
itself: pa.array, pa.scalar, Array.to_numpy(zero_copy_only=False), even pc.equal(column, 1). The query
path builds and reads its arrays here instead; the results are the arrays pyarrow would have made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def one_chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A chunked column as one array (combine_chunks of no chunks imports pandas)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    if column.num_chunks == 0:
        return pa.nulls(0, column.type)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def validity(arr: pa.Array) -> np.ndarray | None:
    """Which rows hold a value (None when all do)."""
    if not arr.null_count:
        return None
    if arr.type == pa.null():
        return np.zeros(len(arr), bool)
    bits = np.frombuffer(arr.buffers()[0], np.uint8)
    return np.unpackbits(bits, bitorder="little", count=arr.offset + len(arr))[arr.offset:].astype(bool)


def id_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An id column (integers without nulls) as int64 numpy; anything else as pyarrow converts it."""
    arr = one_chunk(column)
    if arr.null_count or not pa.types.is_integer(arr.type):
        return arr.to_numpy(zero_copy_only=False)
    if arr.type != pa.int64():
        arr = arr.cast(pa.int64())
    if len(arr) == 0:
        return np.zeros(0, np.int64)
    return np.frombuffer(arr.buffers()[1], np.int64, count=len(arr), offset=arr.offset * 8)


def int64_array(values: np.ndarray) -> pa.Array:
    """Integers as an arrow int64 array, straight from the numpy buffer."""
    buf = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(buf), [None, pa.py_buffer(buf)])


SMALL_TAKE = 256  # up to this many positions, take() gathers by slicing


def take(arr: pa.Array, positions: np.ndarray) -> pa.Array:
    """arr[positions] as one array. A few positions (a query's top k paths) are gathered by slicing,
    which needs no compute kernels: Array.take imports pyarrow.compute, 0.06 s of a cold query."""
    positions = np.asarray(positions, np.int64)
    if len(positions) > SMALL_TAKE:
        return arr.take(int64_array(positions))
    if len(positions) and (positions.min() < 0 or positions.max() >= len(arr)):
        raise IndexError(f"position out of range for an array of {len(arr)}")
    if not len(positions):
        return arr.slice(0, 0)
    return pa.concat_arrays([arr.slice(int(i), 1) for i in positions])


def bool_array(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A numpy bool mask as an arrow bool array; rows where `valid` is False are null."""
    values = np.asarray(values, bool)
    bits = pa.py_buffer(np.packbits(values, bitorder="little"))
    if valid is None or valid.all():
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, bits])
    mask = pa.py_buffer(np.packbits(np.asarray(valid, bool), bitorder="little"))
    return pa.Array.from_buffers(pa.bool_(), len(values), [mask, bits], null_count=int((~valid).sum()))


def bool_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean column as a numpy mask; nulls count as False."""
    arr = one_chunk(column)
    if len(arr) == 0:
        return np.zeros(0, bool)
    bits = np.frombuffer(arr.buffers()[1], np.uint8)
    out = np.unpackbits(bits, bitorder="little", count=arr.offset + len(arr))[arr.offset:].astype(bool)
    valid = validity(arr)
    return out & valid if valid is not None else out


def float_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64 numpy; nulls become NaN."""
    arr = one_chunk(column)
    if arr.type != pa.float64():
        arr = arr.cast(pa.float64())
    if len(arr) == 0:
        return np.zeros(0, np.float64)
    out = np.frombuffer(arr.buffers()[1], np.float64, count=len(arr), offset=arr.offset * 8).copy()
    valid = validity(arr)
    if valid is not None:
        out[~valid] = np.nan
    return out


def string_array(values: Sequence[str]) -> pa.Array:
    """Strings as an arrow string array."""
    data = [v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets),
                                                          pa.py_buffer(b"".join(data))])


def array(values: Sequence, type: pa.DataType | None = None) -> pa.Array:
    """Python values of one kind (None allowed) as an arrow array, cast to `type` when given."""
    valid = np.array([v is not None for v in values], bool)
    present = [v for v in values if v is not None]
    if not present:
        out = pa.nulls(len(values))
    elif all(isinstance(v, bool) for v in present):
        out = bool_array(np.array([bool(v) for v in values]), valid)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        out = _numeric(np.array([v if v is not None else 0 for v in values], np.int64), pa.int64(), valid)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        out = _numeric(np.array([v if v is not None else 0 for v in values], np.float64), pa.float64(),
                       valid)
    elif all(isinstance(v, str) for v in present):
        out = string_array([v if v is not None else "" for v in values])
        if not valid.all():
            out = pa.Array.from_buffers(pa.string(), len(values),
                                        [pa.py_buffer(np.packbits(valid, bitorder="little")),
                                         *out.buffers()[1:]], null_count=int((~valid).sum()))
    else:
        kinds = sorted({v.__class__.__name__ for v in present})
        raise TypeError(f"values of mixed or unsupported kinds: {', '.join(kinds)}")
    return out.cast(type) if type is not None and out.type != type else out


def scalar(value, type: pa.DataType | None = None) -> pa.Scalar:
    """One Python value as an arrow scalar (cast to `type` when given)."""
    return array([value], type)[0]


def _numeric(values: np.ndarray, kind: pa.DataType, valid: np.ndarray) -> pa.Array:
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(kind, len(values), [mask, pa.py_buffer(values)],
                                 null_count=int((~valid).sum()))
