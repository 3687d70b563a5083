"""`pixdex search` output formats, errors and the HTML page; shapes-clip semantics on the shapes world."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pixdex.cli import main
from pixdex.demo.world import read_labels, row_objects
from search.results import write_html
from search.searcher import Searcher


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["search", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_output_is_a_table_of_rank_score_path(tiny_store, capsys):
    code, out, _ = run(capsys, tiny_store, "a red circle", "-k", "4")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "query 1: a red circle"
    assert lines[1].split() == ["rank", "score", "path"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    hits = Searcher(tiny_store).search("a red circle", k=4)
    assert [r[2] for r in rows] == [h.path for h in hits]
    assert [float(r[1]) for r in rows] == pytest.approx([h.score for h in hits], abs=1e-4)


def test_json_gives_a_list_per_query(tiny_store, shapes_dir, capsys):
    image = min(shapes_dir.glob("*.jpg"))
    code, out, _ = run(capsys, tiny_store, "a red circle", "a blue star", "-", "a square", "--image", image,
                       "-k", "3", "--json")
    assert code == 0
    data = json.loads(out)
    assert len(data) == 3 and all(len(q) == 3 for q in data)
    assert set(data[0][0]) == {"rank", "id", "path", "score"}
    assert data[2][0]["path"] == str(image.resolve())
    s = Searcher(tiny_store)
    assert [h["id"] for h in data[1]] == [h.id for h in s.search('"a blue star" - "a square"', k=3)]


def test_paths_only_prints_one_path_per_line(tiny_store, capsys):
    code, out, _ = run(capsys, tiny_store, "a green triangle", "-k", "5", "--paths-only", "--path-glob",
                       "*.png")
    assert code == 0
    paths = out.splitlines()
    assert len(paths) == 5 and all(Path(p).is_file() and p.endswith(".png") for p in paths)


def test_where_threshold_and_like(tiny_store, capsys):
    s = Searcher(tiny_store)
    first = s.search("a circle", k=1)[0]
    code, out, _ = run(capsys, tiny_store, "--like", first.id, "-k", "3", "--where", "width >= 1", "--json")
    assert code == 0
    like = json.loads(out)[0]
    assert first.id not in [h["id"] for h in like] and len(like) == 3
    code, out, _ = run(capsys, tiny_store, "a circle", "--threshold", "0.0", "--json")
    everything = json.loads(out)[0]
    assert all(h["score"] >= 0 for h in everything)
    assert len(everything) == sum(h.score >= 0 for h in s.search("a circle", k=s.count))


@pytest.mark.parametrize("argv, message", [
    (["a cat", "--where", "colour = 'red'"], "unknown column 'colour'"),
    (['"a cat'], "col 1: unterminated quote"),
    (["id:100000"], "unknown id 100000"),
    ([], "no query"),
    (["a cat", "-k", "0"], "argument -k/--top: must be a whole number from 1"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_store, capsys, argv, message):
    code, out, err = run(capsys, tiny_store, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("pixdex search: error:")


def test_missing_store_is_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, tmp_path / "nope", "a cat")
    assert code == 2 and "does not exist" in err


def test_html_page_has_inline_thumbnails_per_query(tiny_store, tmp_path, capsys):
    page = tmp_path / "out" / "search.html"
    code, _, err = run(capsys, tiny_store, "a red circle", "a blue square", "-k", "4", "--html", page)
    assert code == 0 and str(page) in err
    text = page.read_text()
    assert text.count("<section") == 2 and "a red circle" in text and "a blue square" in text
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(thumbs) == 8
    assert base64.b64decode(thumbs[0])[:2] == b"\xff\xd8"  # real JPEG bytes, no external files
    assert "http" not in text.split("<body>")[1]


def test_write_html_survives_missing_files(tiny_store, tmp_path):
    s = Searcher(tiny_store)
    hits = s.search("a star", k=2)
    hits[1].path = str(tmp_path / "gone.png")
    out = write_html(tmp_path / "p.html", ["a star", "nothing"], [hits, []], s.store)
    text = out.read_text()
    assert "no preview" in text and "no results" in text and text.count("data:image/jpeg") == 1


# ---- shapes-clip semantics -------------------------------------------------------------------------
@pytest.mark.slow
def test_shapes_clip_finds_the_colour_and_shape_asked_for(shapes_store):
    from test_search import brute_force, hit_ids

    from pixdex.demo.world import COLORS, SHAPES
    from search.query import parse_query

    s = Searcher(shapes_store)
    labels = {row["file"]: row_objects(row)
              for row in read_labels(Path(shapes_store).parent / "images" / "labels.csv")}

    def has(path, colour=None, shape=None):
        return any((colour is None or o["color"] == colour) and (shape is None or o["shape"] == shape)
                   for o in labels[Path(path).name])

    def precision(hits, colour=None, shape=None, k=5):
        k = min(k, sum(has(p, colour, shape) for p in labels))
        return sum(has(h.path, colour, shape) for h in hits[:k]) / k

    # "a red circle" (a colour-shape pair shapes-clip never saw in training) returns mostly red circles
    assert precision(s.search("a red circle", k=5), "red", "circle") >= 0.5
    # colours alone are easy for it; every colour-shape pair, averaged, far above chance (~0.02)
    for colour, hits in zip(COLORS[:4], s.search([f"a {c} shape" for c in COLORS[:4]], k=10)):
        assert precision(hits, colour, k=10) >= 0.8, colour
    pairs = [(c, sh) for c in COLORS for sh in SHAPES]
    results = s.search([f"a {c} {sh}" for c, sh in pairs], k=5)
    assert np.mean([precision(h, c, sh) for (c, sh), h in zip(pairs, results)]) >= 0.25
    # the flat index answer is the brute-force answer on a real model too
    q = s.encode([parse_query("a green hexagon")])[0]
    assert hit_ids(s.search("a green hexagon", k=10)) == brute_force(s.store, q, 10)[0].tolist()
