"""The query mix syntax and the --where filter language (pure parsing and pyarrow evaluation)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from indexer.errors import PixdexError
from search.filters import glob_to_regex, parse_filter, path_mask
from search.query import Query, Term, as_query, mix, parse_query, queries_from_args


def kinds(q: Query):
    return [(t.kind, t.value, t.weight) for t in q.terms]


@pytest.fixture()
def pool_jpg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "pool.jpg")
    return tmp_path / "pool.jpg"


def test_rclip_style_mix_with_weights_images_and_negatives(pool_jpg):
    q = parse_query('"2:golden retriever" + ./pool.jpg - "grass"')
    assert kinds(q) == [("text", "golden retriever", 2.0), ("image", "./pool.jpg", 1.0),
                        ("text", "grass", -1.0)]
    assert q.label == '"2:golden retriever" + ./pool.jpg - "grass"'


def test_plain_text_keeps_hyphens_apostrophes_and_inner_quotes():
    assert kinds(parse_query("a black-and-white dog's toy")) == [("text", "a black-and-white dog's toy", 1.0)]
    assert kinds(parse_query("cat - dog")) == [("text", "cat", 1.0), ("text", "dog", -1.0)]
    assert kinds(parse_query("0.5:cat+dog")) == [("text", "cat+dog", 0.5)]


def test_prefixes_inside_and_outside_quotes():
    assert kinds(parse_query('3:"red circle" + id:12 - 0.5:like:/a/b.png')) == [
        ("text", "red circle", 3.0), ("id", 12, 1.0), ("like", "/a/b.png", -0.5)]
    assert kinds(parse_query('"image:x.png"')) == [("image", "x.png", 1.0)]
    assert kinds(parse_query("text:10:30 meeting")) == [("text", "10:30 meeting", 1.0)]
    assert kinds(parse_query(r'"say \"hi\""')) == [("text", 'say "hi"', 1.0)]


def test_a_missing_file_is_text_and_an_existing_image_is_an_image(pool_jpg):
    assert parse_query("pool.jpg").terms[0].kind == "image"
    assert parse_query("nothere.jpg").terms[0].kind == "text"


@pytest.mark.parametrize("text, col, what", [
    ('"golden retriever', 1, "unterminated quote"),
    ('"a" + + "b"', 7, "expected a term after '+'"),
    ('"a" "b"', 5, "expected '+' or '-' between terms"),
    ('"a" -', 6, "expected a term after '-'"),
    ("id:abc", 4, "an id must be a whole number"),
    ('"a"b', 4, "after the closing quote"),
    ("0:cat", 1, "weight must be greater than 0"),
    ('- "grass"', 1, "at least one positive term"),
    ('""', 2, "empty term"),
])
def test_parse_errors_say_where(text, col, what):
    with pytest.raises(PixdexError) as err:
        parse_query(text)
    assert f"col {col}: " in str(err.value) and what in str(err.value)


def test_empty_query_is_an_error():
    for text in ("", "   "):
        with pytest.raises(PixdexError, match="empty query"):
            parse_query(text)


def test_command_line_words_group_into_queries():
    assert queries_from_args(["a cat", "a dog"]) == ["a cat", "a dog"]
    joined = queries_from_args(["2:golden retriever", "+", "./pool.jpg", "-", "grass", "id:3"])
    assert joined == ['"2:golden retriever" + "./pool.jpg" - "grass"', "id:3"]
    assert kinds(parse_query(joined[0]))[0] == ("text", "golden retriever", 2.0)


def test_python_objects_become_queries():
    img = Image.new("RGB", (4, 4))
    assert as_query(img).terms[0].kind == "image"
    assert as_query(b"\x89PNG").terms[0].kind == "image"
    assert as_query(np.ones(4)).terms[0].kind == "embedding"
    with pytest.raises(PixdexError, match="1-d"):
        as_query(np.ones((2, 4)))
    m = mix((2, "dog"), (-1, "grass"))
    assert [(t.value, t.weight) for t in m.terms] == [("dog", 2), ("grass", -1)]
    assert m.label == "2:dog - grass"
    assert as_query(Term("id", 5)).terms[0].value == 5


# ---- filters ---------------------------------------------------------------------------------------
@pytest.fixture()
def table() -> pa.Table:
    return pa.table({
        "id": pa.array([0, 1, 2, 3, 4], pa.int64()),
        "path": ["/a/x.png", "/a/y.jpg", "/b/z.png", "/b/w.JPG", "/c/v.gif"],
        "width": pa.array([64, 128, 256, 512, None], pa.int32()),
        "shape": ["circle", "square", "circle", None, "star"],
        "ok": [True, False, True, True, None],
        "labels": [["red", "circle"], ["blue"], [], None, ["red"]],
    })


def rows(expr: str, table: pa.Table) -> list[int]:
    return np.nonzero(parse_filter(expr).mask(table))[0].tolist()


@pytest.mark.parametrize("expr, expected", [
    ("shape = 'circle'", [0, 2]),
    ("shape != 'circle'", [1, 4]),  # null is neither equal nor unequal (SQL)
    ("width >= 128 AND width < 512", [1, 2]),
    ("128 <= width", [1, 2, 3]),
    ("width > 100 OR shape = 'star'", [1, 2, 3, 4]),
    ("NOT (shape = 'circle') AND width IS NOT NULL", [1]),
    ("shape IN ('square', 'star')", [1, 4]),
    ("shape NOT IN ('square', 'star')", [0, 2]),
    ("path LIKE '/b/%'", [2, 3]),
    ("path ILIKE '%.jpg'", [1, 3]),
    ("path GLOB '*.png'", [0, 2]),
    ("path NOT GLOB '/[ab]/*'", [4]),
    ("shape IS NULL", [3]),
    ("ok", [0, 2, 3]),
    ("ok = FALSE", [1]),
    ("labels = 'red'", [0, 4]),
    ("labels IN ('blue', 'circle')", [0, 1]),
    ("id = 3 or ID = 4", [3, 4]),
    ("`width` > 200 and path glob '*/b/*'", [2, 3]),
    ("width = 64.0", [0]),
])
def test_filter_expressions(table, expr, expected):
    assert rows(expr, table) == expected


@pytest.mark.parametrize("expr, col, what", [
    ("shap = 'circle'", 1, "unknown column 'shap'; available: id, path, width, shape, ok, labels"),
    ("width >= 'big'", 10, "holds numbers"),
    ("shape = 3", 9, "quote the value"),
    ("width >", 8, "expected a column name, a quoted string or a number, found the end"),
    ("width > 3 AND", 14, "found the end"),
    ("(width > 3", 11, "expected ')'"),
    ("width > 3 width", 11, "AND, OR or the end"),
    ("shape = 'x", 9, "unterminated ' quote"),
    ("width ~ 3", 7, "unexpected character '~'"),
    ("width LIKE 'a%'", 1, "needs a text column"),
    ("width", 1, "not boolean"),
    ("shape = NULL", 7, "IS NULL"),
    ("shape NOT = 'a'", 11, "IN, LIKE, ILIKE or GLOB after NOT"),
])
def test_filter_errors_say_where(table, expr, col, what):
    with pytest.raises(PixdexError) as err:
        parse_filter(expr).mask(table)
    msg = str(err.value)
    assert f"col {col}: " in msg and what in msg and "\n" not in msg


def test_filter_language_never_evaluates_python(table):
    with pytest.raises(PixdexError):
        rows("__import__('os').system('true')", table)


def test_globs_and_prefixes_over_paths(table):
    assert path_mask(table["path"], glob="*.png").tolist() == [True, False, True, False, False]
    assert path_mask(table["path"], prefix="/b/").tolist() == [False, False, True, True, False]
    assert (path_mask(table["path"], glob="/?/[xy].*", prefix="/a").tolist()
            == [True, True, False, False, False])
    assert glob_to_regex("a.b*[!c]") == r"^a\.b.*[^c]$"
