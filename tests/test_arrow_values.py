"""indexer.arrow_values builds the arrays pyarrow would build, without pyarrow's pandas import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from indexer.arrow_values import (
    array,
    bool_array,
    bool_numpy,
    float_numpy,
    id_array,
    int64_array,
    scalar,
    string_array,
    take,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("values, typ", [
    ([1, None, 3], None), ([1, 2], pa.int32()), ([1.5, None, -2.0], None), ([True, None, False], None),
    (["a", None, "ünï", ""], None), (["x"], pa.large_string()), ([None, None], None), ([], None),
    (["2024-06-01"], pa.string()),
])
def test_arrays_equal_pyarrows_own(values, typ):
    got = array(values, typ)
    want = pa.array(values, type=typ) if typ is not None or values else pa.array([], pa.null())
    assert got.equals(want) and got.type == want.type


def test_scalars_equal_pyarrows_own():
    for value, typ in [(5, None), (2.5, None), (True, None), ("x", pa.string()), (None, pa.bool_())]:
        assert scalar(value, typ).equals(pa.scalar(value, type=typ))


def test_numpy_round_trips_keep_nulls_and_offsets():
    mask = np.array([True, False, True, True, False])
    valid = np.array([True, True, False, True, True])
    arr = bool_array(mask, valid)
    assert arr.to_pylist() == [True, False, None, True, False]
    assert bool_numpy(arr).tolist() == [True, False, False, True, False]  # null counts as False
    assert bool_numpy(arr.slice(2)).tolist() == [False, True, False]
    floats = pa.chunked_array([pa.array([1.0, None]), pa.array([3, 4], pa.int32()).cast(pa.float64())])
    assert np.array_equal(float_numpy(floats), [1.0, np.nan, 3.0, 4.0], equal_nan=True)
    ids = int64_array(np.array([7, 8, 9]))
    assert id_array(ids.slice(1)).tolist() == [8, 9] and id_array(pa.chunked_array([], pa.int64())).size == 0
    assert string_array(["a", "bc"]).equals(pa.array(["a", "bc"]))
    with pytest.raises(TypeError, match="mixed"):
        array([1, "a"])


def test_take_gathers_like_pyarrows_take():
    paths = pa.chunked_array([["a", None], ["ünï", "", "e" * 300]]).combine_chunks().slice(1)
    for positions in ([3, 0, 0, 2], [], list(range(4)) * 100):  # a few (by slicing) and many (Array.take)
        got = take(paths, np.array(positions))
        assert got.equals(paths.take(pa.array(positions, pa.int64()))) and got.type == paths.type
    for bad in ([4], [-1]):
        with pytest.raises(IndexError):
            take(paths, np.array(bad))


def test_a_plain_query_does_not_import_compute_kernels(shapes_store):
    """A cold `pixdex search STORE id:3` (and a stored image) needs no pyarrow.compute (0.06 s to import)."""
    code = ("import json, sys; from pixdex.cli import main\nmain(sys.argv[1:])\n"
            "print(json.dumps(sorted(m for m in ('pyarrow.compute', 'urllib.request') if m in sys.modules)))")
    image = sorted(Path(shapes_store).parent.rglob("*.png"))[0]
    for query in ("id:3", str(image)):
        argv = ["search", str(shapes_store), query, "--paths-only", "-k", "5"]
        out = subprocess.run([sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = out.stdout.strip().splitlines()
        assert json.loads(lines[-1]) == [] and len(lines) == 6, query


def test_a_filtered_sorted_query_does_not_import_pandas(shapes_store):
    """--where, --near and --sort on a cold CLI query: no pandas (its import costs 0.3-0.5 s)."""
    code = ("import contextlib, io, json, sys; from pixdex.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    main(sys.argv[1:])\n"
            "print(json.dumps(['pandas' in sys.modules, out.getvalue()]))")
    for extra in (["--where", "width > 10 AND path LIKE '%png' AND taken IS NULL AND width IN (1.5, 128)",
                   "--sort", "-taken"], ["--near", "48.85,2.35,100"], ["--where", "NOT height < 3"]):
        argv = ["search", str(shapes_store), "id:3", "--json", *extra]
        out = subprocess.run([sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        imported, printed = json.loads(out.stdout.strip().splitlines()[-1])
        assert not imported, extra
        assert isinstance(json.loads(printed), list)
