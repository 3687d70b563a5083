"""pixdex eval: accuracy, per-class precision/recall and the confusion matrix agree with the predictions."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import shapes_clip_promise

from classify.evaluate import evaluate_store, read_truth
from indexer.errors import PixdexError
from pixdex.cli import main
from pixdex.demo.world import SHAPES


def predictions(out_dir) -> list[dict]:
    with (out_dir / "predictions.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_eval_metrics_follow_from_predictions(tiny_store, shapes_dir, tmp_path):
    report = evaluate_store(tiny_store, shapes_dir / "labels.csv", column="shape", out_dir=tmp_path / "ev")
    rows = predictions(tmp_path / "ev")
    assert report.evaluated == len(rows) == 48 and report.missing == 0
    truth = [set(r["truth"].split(";")) for r in rows]
    assert report.top1 == pytest.approx(np.mean([r["predicted"] in t for r, t in zip(rows, truth)]))
    assert report.top5 == pytest.approx(np.mean([bool(set(r["top5"].split(";")) & t)
                                                 for r, t in zip(rows, truth)]))
    cm = np.array(report.confusion)
    single = [(next(iter(t)), r["predicted"]) for r, t in zip(rows, truth) if len(t) == 1]
    assert cm.sum() == len(single) and report.multi_label_rows == sum(len(t) > 1 for t in truth)
    for c in report.per_class:
        i = report.labels.index(c.label)
        assert c.support == sum(1 for t, _ in single if t == c.label)
        if c.precision is not None:
            assert c.precision == pytest.approx(cm[i, i] / cm[:, i].sum())
    assert (tmp_path / "ev" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["top1"] == report.top1
    assert set(report.labels) == {v for r in rows for v in r["truth"].split(";")}


def test_folder_per_class_truth_and_missing_rows(tiny_store, shapes_dir, tmp_path):
    rows = list(csv.DictReader((shapes_dir / "labels.csv").open()))
    root = tmp_path / "classes"
    # symlinks: the truth folder's files resolve to the stored paths
    for r in rows:
        if ";" not in r["shape"]:
            (root / r["shape"]).mkdir(parents=True, exist_ok=True)
            (root / r["shape"] / r["file"]).symlink_to(shapes_dir / r["file"])
    extra = root / SHAPES[0] / "not-in-store.png"
    shutil.copy(shapes_dir / rows[0]["file"], extra)
    truth = read_truth(root)
    assert len(truth) == sum(";" not in r["shape"] for r in rows) + 1
    report = evaluate_store(tiny_store, root, labels=list(SHAPES))
    assert report.missing == 1 and report.evaluated == len(truth) - 1 and report.multi_label_rows == 0
    assert np.array(report.confusion).sum() == report.evaluated


def test_eval_errors(tiny_store, shapes_dir, tmp_path):
    with pytest.raises(PixdexError, match="no column 'kind'"):
        evaluate_store(tiny_store, shapes_dir / "labels.csv", column="kind")
    other = tmp_path / "labels.csv"
    other.write_text("file,shape\nnowhere.png,circle\n")
    with pytest.raises(PixdexError, match="none of the 1 truth images"):
        evaluate_store(tiny_store, other)
    with pytest.raises(PixdexError, match="does not exist"):
        evaluate_store(tiny_store, tmp_path / "nope.csv")


def test_cli_eval(tiny_store, shapes_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_store), "--truth", str(shapes_dir / "labels.csv"), "--column", "color",
                 "--out-dir", str(tmp_path / "ev"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["column"] == "color" and out["evaluated"] == 48 and 0 <= out["top1"] <= out["top5"] <= 1
    assert (tmp_path / "ev" / "confusion.png").is_file()
    assert main(["eval", str(tiny_store), "--truth", str(shapes_dir / "labels.csv")]) == 0
    assert "top-1" in capsys.readouterr().out


def test_shapes_clip_recognises_shapes(shapes_store, tmp_path):
    labels_csv = next(shapes_store.parent.glob("images/labels.csv"))
    # the prompt shapes-clip's own quality promise (shape top-1 >= 0.9 on single objects) is measured with
    report = evaluate_store(shapes_store, labels_csv, column="shape", template="a photo of a {}.",
                            out_dir=tmp_path)
    assert report.evaluated == 240
    assert report.top1 >= max(0.25, shapes_clip_promise("shape_top1", 0.8)), report.text()  # chance: 1/6
    colors = evaluate_store(shapes_store, labels_csv, column="color", template="a photo of a {} shape.")
    assert colors.top1 >= 0.8, colors.text()
    assert report.top5 >= report.top1


def test_demo_step_tags_and_evaluates(tiny_store, shapes_dir, tmp_path, capsys):
    from indexer.store import Store
    from pixdex.cli.classify import demo_tag_and_eval

    shutil.copytree(tiny_store, tmp_path / "store")
    demo_tag_and_eval(tmp_path, shapes_dir / "labels.csv")
    out = capsys.readouterr().out
    assert "eval shape" in out and "eval color" in out
    assert (tmp_path / "eval-shape" / "confusion.png").is_file() and (tmp_path / "tags.parquet").is_file()
    assert set(Store.open(tmp_path / "store").metadata()["shape_pred"].to_pylist()) <= set(SHAPES)
