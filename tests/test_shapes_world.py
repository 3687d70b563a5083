"""The shapes-world generator, its tokenizer, and the `pixdex shapes` command."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixdex.demo import world


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_vocabulary_sizes():
    assert len(world.COLORS) >= 8 and len(world.SHAPES) >= 6
    assert set(world.SIZES) == {"small", "medium", "large"}
    assert set(world.POSITIONS) == {"left", "right", "top", "bottom", "center"}


def test_heldout_combos_one_per_shape_distinct_colours():
    held = world.HELDOUT_COMBOS
    assert len(held) >= 6
    assert sorted(s for _, s in held) == sorted(world.SHAPES)
    assert len({c for c, _ in held}) == len(held)
    assert all(c in world.COLORS for c, _ in held)


def test_same_seed_gives_identical_collection(tmp_path):
    a = world.write_collection(tmp_path / "a", count=30, seed=5)
    b = world.write_collection(tmp_path / "b", count=30, seed=5)
    assert a.read_bytes() == b.read_bytes()
    assert _files(a.parent) == _files(b.parent)
    c = world.write_collection(tmp_path / "c", count=30, seed=6)
    assert c.read_bytes() != a.read_bytes()


def test_labels_csv_columns_and_files(tmp_path):
    labels = world.write_collection(tmp_path / "col", count=80, seed=1)
    assert labels == tmp_path / "col" / "labels.csv"
    with labels.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    assert header == ["file", "color", "shape", "size", "position", "palette", "background", "caption"]
    assert len(rows) == 80
    exts = {Path(r["file"]).suffix for r in rows}
    assert exts == {".jpg", ".png"}
    for r in rows:
        path = labels.parent / r["file"]
        assert path.is_file() and not Path(r["file"]).is_absolute()
        with Image.open(path) as im:
            assert im.format == ("JPEG" if path.suffix == ".jpg" else "PNG")
            assert im.size == (128, 128) and im.mode == "RGB"
        objs = world.row_objects(r)
        for o in objs:
            assert o["color"] in world.COLORS and o["shape"] in world.SHAPES
            assert o["size"] in world.SIZES and o["position"] in world.POSITIONS
            assert (f"{o['size']} {o['color']} {o['shape']} {world.POSITION_PHRASE[o['position']]}"
                    in r["caption"])
        assert r["background"] in world.BACKGROUNDS and r["background"] not in r["caption"]
        assert r["palette"] == ";".join(world.PALETTE[c] for c in r["color"].split(";"))
        assert not {"warm", "cool"} & set(r["caption"].split())
    assert {r["background"] for r in rows} == set(world.BACKGROUNDS)


def test_two_object_rows(tmp_path):
    rows = world.read_labels(world.write_collection(tmp_path, count=200, seed=2))
    two = [r for r in rows if ";" in r["color"]]
    assert 0.12 <= len(two) / len(rows) <= 0.4
    for r in two:
        for key in ("color", "shape", "size", "position"):
            assert len(r[key].split(";")) == 2
        assert " and " in r["caption"]
        a, b = r["position"].split(";")
        assert {a, b} in ({"left", "right"}, {"top", "bottom"})
        assert (r["color"].split(";")[0], r["shape"].split(";")[0]) != (r["color"].split(";")[1],
                                                                       r["shape"].split(";")[1])
    assert all(";" not in r["caption"] for r in rows)


def test_exclude_combos_and_render_determinism(tmp_path):
    scenes = world.random_scenes(300, seed=3, exclude_combos=world.HELDOUT_COMBOS)
    assert not any(s.combos() & set(world.HELDOUT_COMBOS) for s in scenes)
    s = scenes[0]
    a, b = world.render_scene(s), world.render_scene(s)
    assert a.size == (128, 128)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert world.render_scene(s, size=64).size == (64, 64)
    only = world.random_scene(np.random.default_rng(0), allowed_combos=[("red", "star")], two_object_prob=0)
    assert only.combos() == {("red", "star")}


def test_object_colour_dominates_its_area():
    # The drawn object really has its colour: the pixel at its centre is close to the nominal RGB.
    rng = np.random.default_rng(4)
    for color in world.COLORS:
        scene = world.random_scene(rng, allowed_combos=[(color, "square")], two_object_prob=0)
        img = np.asarray(world.render_scene(scene)).astype(int)
        cx, cy = (int(v * 128) for v in scene.objects[0].center)
        assert np.abs(img[cy, cx] - np.array(world.COLOR_RGB[color])).max() < 45


def test_tokenizer_words_are_single_tokens(tmp_path):
    from transformers import AutoTokenizer

    from pixdex.demo.tokenizer import build_tokenizer, vocabulary_words, write_tokenizer_files

    tok = build_tokenizer()
    for w in vocabulary_words():
        assert len(tok(w, add_special_tokens=False)["input_ids"]) == 1, w
    ids = tok("a photo of a red circle.")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 9
    # Unknown text falls back to byte-level pieces, never to <unk>.
    odd = tok("zebra Ünïcode 😀", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in odd and tok.decode(odd) == "zebra ünïcode 😀"
    write_tokenizer_files(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("a photo of a red circle.")["input_ids"] == ids
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()


def test_cli_shapes_writes_collection(tmp_path, capsys):
    from pixdex.cli import main

    out = tmp_path / "shapes"
    assert main(["shapes", str(out), "--count", "12", "--seed", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert "12 images" in line and len(line.splitlines()) == 1
    rows = world.read_labels(out / "labels.csv")
    assert len(rows) == 12
    # Same as the library call with the same seed.
    ref = world.write_collection(tmp_path / "ref", count=12, seed=4)
    assert (out / "labels.csv").read_bytes() == ref.read_bytes()


def test_cli_shapes_user_errors(tmp_path, capsys):
    from pixdex.cli import main

    assert main(["shapes", str(tmp_path / "x"), "--count", "0"]) == 2
    assert "error" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["shapes", str(tmp_path / "busy"), "--count", "3"]) == 2
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_shapes_subprocess(tmp_path):
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "pixdex", "shapes", str(out), "--count", "5", "--seed", "9"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "5 images" in proc.stdout
    assert len(world.read_labels(out / "labels.csv")) == 5
