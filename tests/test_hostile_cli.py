"""Hostile command lines: every bad option, output path, device and model is refused with one line and
exit status 2 before any work, and nothing stored is replaced by a partial result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from classify.tagging import tag_store
from indexer.errors import PixdexError
from indexer.store import Store
from pixdex.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, command: str, needle: str) -> None:
    assert code == 2, err
    assert err.startswith(f"pixdex {command}: error:") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err


@pytest.fixture
def tagged_store(tiny_store, tmp_path) -> Path:
    """A writable copy of the tiny store with a complete tag set `shape_pred`."""
    store = tmp_path / "store.pixdex"
    shutil.copytree(tiny_store, store)
    tag_store(store, ["circle", "star"], save_as="shape_pred", progress=False)
    return store


def tag_table(store: Path, name: str = "shape_pred"):
    st = Store.open(store)
    return pq.read_table(st.path / st.manifest["tags"][name])


# ---- numeric options: refused before any work --------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "0", "x", "1.5"])
def test_classify_bad_batch_rows_keeps_the_saved_tag_set(tagged_store, capsys, value):
    before = tag_table(tagged_store)
    manifest = (tagged_store / "manifest.json").read_bytes()
    code, out, err = run(capsys, "classify", tagged_store, "--labels", "circle,star", "--batch-rows", value,
                         "--save-as", "shape_pred")
    one_line_error(code, err, "classify", "argument --batch-rows")
    assert out == ""
    assert (tagged_store / "manifest.json").read_bytes() == manifest
    assert tag_table(tagged_store).equals(before) and before.num_rows == Store.open(tagged_store).count


@pytest.mark.parametrize("kwargs, needle", [
    ({"batch_rows": -1}, "batch_rows must be a whole number from 1"),
    ({"batch_rows": 0}, "batch_rows must be"),
    ({"workers": -3}, "workers must be"),
    ({"top_k": 10**30}, "top_k must be"),
    ({"mode": "multi", "threshold": float("nan")}, "threshold must be"),
    ({"device": "bogus"}, "device 'bogus' is not a device"),
])
def test_tagging_api_refuses_bad_parameters_before_touching_the_store(tagged_store, kwargs, needle):
    manifest = (tagged_store / "manifest.json").read_bytes()
    with pytest.raises(PixdexError, match=needle) as err:
        tag_store(tagged_store, ["circle", "star"], save_as="shape_pred", progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert (tagged_store / "manifest.json").read_bytes() == manifest


def test_a_tag_set_covering_fewer_items_than_the_store_is_not_saved(tagged_store, tmp_path):
    """The store gains an item while tagging runs: the partial tag set must not replace the full one."""
    from indexer.job import index_collection

    before = tag_table(tagged_store)
    extra = tmp_path / "extra"
    extra.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 30)).save(extra / "new.png")
    model = Store.open(tagged_store).model["name"]
    added = []

    def add_an_image_once(table) -> None:
        if not added:
            added.append(index_collection([str(extra)], tagged_store, model=model, progress=False, workers=0))

    with pytest.raises(PixdexError, match="not saved: it covers 48 of the store's 49 items"):
        tag_store(tagged_store, ["circle", "star"], save_as="shape_pred", emit=add_an_image_once,
                  progress=False)
    assert added and Store.open(tagged_store).count == 49
    assert tag_table(tagged_store).equals(before)


ENOUGH = ["--labels", "a,b"]


@pytest.mark.parametrize("argv, option", [
    (["index", "SRC", "-o", "OUT", "--batch-size", "0"], "--batch-size"),
    (["index", "SRC", "-o", "OUT", "--workers", "-1"], "--workers"),
    (["index", "SRC", "-o", "OUT", "--workers", "100000"], "--workers"),
    (["index", "SRC", "-o", "OUT", "--shard-size", "0"], "--shard-size"),
    (["index", "SRC", "-o", "OUT", "--shard-size", "-5"], "--shard-size"),
    (["index", "SRC", "-o", "OUT", "--max-pixels", "-1"], "--max-pixels"),
    (["index", "SRC", "-o", "OUT", "--gpus-per-worker", "-1"], "--gpus-per-worker"),
    (["index", "SRC", "-o", "OUT", "--max-index-memory", "0"], "--max-index-memory"),
    (["index", "SRC", "-o", "OUT", "--max-index-memory", "lots"], "--max-index-memory"),
    (["classify", "STORE", *ENOUGH, "--batch-rows", "-1"], "--batch-rows"),
    (["classify", "STORE", *ENOUGH, "--top-k", "0"], "--top-k"),
    (["classify", "STORE", *ENOUGH, "--threshold", "1.5"], "--threshold"),
    (["classify", "STORE", *ENOUGH, "--threshold", "nan"], "--threshold"),
    (["classify-image", "x.png", *ENOUGH, "--top-k", "-2"], "--top-k"),
    (["classify-image", "x.png", *ENOUGH, "--timeout", "-1"], "--timeout"),
    (["classify-image", "x.png", *ENOUGH, "--timeout", "inf"], "--timeout"),
    (["search", "STORE", "q", "-k", "-1"], "-k/--top"),
    (["search", "STORE", "q", "-k", "99999999999999999999999"], "-k/--top"),
    (["search", "STORE", "q", "--threshold", "2"], "--threshold"),
    (["search", "STORE", "q", "--dedup", "0"], "--dedup"),
    (["serve", "STORE", "--port", "70000"], "--port"),
    (["serve", "STORE", "--max-k", "0"], "--max-k"),
    (["serve", "STORE", "--max-labels", "-1"], "--max-labels"),
    (["serve", "STORE", "--max-image-pixels", "0"], "--max-image-pixels"),
    (["serve", "STORE", "--max-upload", "-3"], "--max-upload"),
    (["shapes", "DIR", "--count", "0"], "--count"),
    (["shapes", "DIR", "--seed", "-1"], "--seed"),
    (["shapes", "DIR", "--image-size", "100000"], "--image-size"),
    (["shapes", "DIR", "--two-object-prob", "2"], "--two-object-prob"),
    (["demo", "DIR", "--count", "-10"], "--count"),
    (["duplicates", "STORE", "--threshold", "0"], "--threshold"),
    (["duplicates", "STORE", "--tolerance", "300"], "--tolerance"),
])
def test_every_numeric_option_is_checked_before_any_work(tiny_store, tmp_path, capsys, argv, option):
    shutil.copytree(tiny_store, tmp_path / "STORE")
    manifest = (tmp_path / "STORE" / "manifest.json").read_bytes()
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    code, out, err = run(capsys, *argv)
    one_line_error(code, err, argv[0], f"argument {option}: must be")
    assert out == "" and [p.name for p in tmp_path.iterdir()] == ["STORE"]  # nothing created
    assert (tmp_path / "STORE" / "manifest.json").read_bytes() == manifest


@pytest.mark.parametrize("command", [["search", "{}", "a circle"], ["classify", "{}", "--labels", "a,b"],
                                     ["info", "{}"], ["serve", "{}"], ["duplicates", "{}"],
                                     ["eval", "{}", "--truth", "x.csv"]])
def test_a_missing_store_is_refused_before_any_import(tmp_path, capsys, command):
    """A mistyped store path: one line naming it, before the command imports its libraries (0.07 s)."""
    for target, why in ((tmp_path / "nope.pixdex", "does not exist"),
                        (tmp_path, "is not a pixdex store (no manifest.json)")):
        code, out, err = run(capsys, *[a.format(target) for a in command])
        one_line_error(code, err, command[0], f"argument STORE: store {target} {why}")


# ---- output paths, devices, models ------------------------------------------------------------------
def test_html_to_a_folder_or_an_unwritable_place_is_refused_before_searching(tiny_store, tmp_path, capsys):
    code, out, err = run(capsys, "search", tiny_store, "a circle", "--html", tmp_path)
    one_line_error(code, err, "search", "is a folder")
    assert out == ""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run(capsys, "search", tiny_store, "a circle", "--html", blocker / "sub" / "page.html")
    one_line_error(code, err, "search", "is not a folder")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, "search", tiny_store, "a circle", "--html", locked / "page.html")
        one_line_error(code, err, "search", "permission denied")


def test_html_write_failing_late_is_still_one_line(tiny_store, tmp_path, capsys, monkeypatch):
    """A disk that fails while the page is written: one line naming the file, rc 2."""
    import search.results

    def fail(*_a, **_k):
        raise OSError(28, "No space left on device", str(tmp_path / "page.html"))

    monkeypatch.setattr(search.results, "write_html", fail)
    code, _, err = run(capsys, "search", tiny_store, "a circle", "--html", tmp_path / "page.html")
    one_line_error(code, err, "search", f"{tmp_path / 'page.html'}: No space left on device")


def test_classify_out_to_a_folder_is_refused(tagged_store, capsys):
    code, _, err = run(capsys, "classify", tagged_store, "--labels", "a,b", "--out", tagged_store)
    one_line_error(code, err, "classify", "is a folder")


def test_eval_out_dir_that_is_a_file_is_refused_before_evaluating(tiny_store, shapes_dir, tmp_path, capsys):
    blocker = tmp_path / "report"
    blocker.write_text("keep me")
    code, out, err = run(capsys, "eval", tiny_store, "--truth", shapes_dir / "labels.csv", "--out-dir",
                         blocker)
    one_line_error(code, err, "eval", "argument --out-dir: folder")
    assert "exists and is not a folder" in err and out == "" and blocker.read_text() == "keep me"
    from classify.evaluate import evaluate_store

    with pytest.raises(PixdexError, match="out_dir .* exists and is not a folder"):
        evaluate_store(tiny_store, shapes_dir / "labels.csv", out_dir=blocker)


@pytest.mark.parametrize("kwargs, needle", [
    ({"batch_size": 0}, "batch_size must be a whole number from 1"),
    ({"batch_size": -1}, "batch_size must be"),
])
def test_classifier_api_refuses_bad_sizes_before_loading_a_model(kwargs, needle):
    from classify.classifier import ZeroShotClassifier

    with pytest.raises(PixdexError, match=needle):
        ZeroShotClassifier("no-such-model-is-loaded", **kwargs)


@pytest.mark.parametrize("kwargs, needle", [
    ({"top_k": 0}, "top_k must be"), ({"top_k": 2.5}, "top_k must be"), ({"timeout": -1}, "timeout must be"),
    ({"timeout": float("inf")}, "timeout must be"),
])
def test_classifier_call_refuses_bad_options(tiny_clip, kwargs, needle):
    from PIL import Image

    from classify.classifier import ZeroShotClassifier

    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    with pytest.raises(PixdexError, match=needle):
        clf(Image.new("RGB", (32, 32)), candidate_labels=["a", "b"], **kwargs)


@pytest.mark.parametrize("device, needle", [
    ("bogus", "'bogus' is not a device"),
    ("cuda:x", "is not a device"),
    ("cuda", "CUDA is not available"),
    ("mps", "MPS is not available"),
])
def test_unavailable_or_unknown_device_is_one_line(tiny_store, capsys, device, needle):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    for argv in (["search", tiny_store, "a circle"], ["classify", tiny_store, "--labels", "a,b"],
                 ["classify-image", "x.png", "--labels", "a,b"], ["index", tiny_store, "-o", tiny_store],
                 ["eval", tiny_store, "--truth", "x.csv"], ["repair", tiny_store], ["serve", tiny_store]):
        code, _, err = run(capsys, *argv, "--device", device)
        one_line_error(code, err, str(argv[0]), needle)


def test_cuda_index_beyond_the_device_count_is_refused():
    import torch

    from indexer.params import check_device

    with pytest.raises(PixdexError, match="device 'cuda:99'"):
        check_device("cuda:99")
    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    if torch.cuda.is_available():
        assert check_device("cuda:0") == "cuda:0"


@pytest.fixture
def broken_models(shapes_clip, tmp_path) -> dict[str, Path]:
    garbage = tmp_path / "garbage"
    shutil.copytree(shapes_clip, garbage)
    (garbage / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "noweights"
    shutil.copytree(shapes_clip, empty)
    (empty / "model.safetensors").unlink()
    return {"garbage": garbage, "noweights": empty}


@pytest.mark.parametrize("which, needle", [
    ("garbage", "damaged or incomplete (SafetensorError"),
    ("noweights", "has no weights (model.safetensors or pytorch_model.bin)"),
])
def test_broken_model_folder_is_explained_not_blamed_on_the_hub(broken_models, tmp_path, capsys, which,
                                                                needle):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    code, out, err = run(capsys, "classify-image", image, "--labels", "a,b", "--model", broken_models[which])
    one_line_error(code, err, "classify-image", needle)
    assert "offline" not in err and "hub" not in err
    code, _, err = run(capsys, "index", image, "-o", tmp_path / "s", "--model", broken_models[which])
    one_line_error(code, err, "index", needle)
    assert not (tmp_path / "s").exists()


# ---- one handler for everything ---------------------------------------------------------------------
def test_info_into_a_closed_pipe_exits_quietly(tiny_store):
    """`pixdex info STORE | head -2` when head has gone: no BrokenPipeError traceback, rc 141 like cat."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before pixdex writes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "pixdex", "info", str(tiny_store)], stdout=write,
                              stderr=subprocess.PIPE, env=env, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141
    assert proc.stderr == b""


def test_an_unexpected_failure_is_one_line_with_rc_1(tiny_store, capsys, monkeypatch):
    import pixdex.cli.info

    def broken(args):
        raise RuntimeError("something nobody expected\nsecond line")

    monkeypatch.setattr(pixdex.cli.info, "run_info", broken)
    monkeypatch.delenv("PIXDEX_DEBUG", raising=False)
    code, _, err = run(capsys, "info", tiny_store)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("pixdex info: internal error: RuntimeError: something nobody expected")
    monkeypatch.setenv("PIXDEX_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["info", str(tiny_store)])


def test_usage_errors_are_one_line(capsys):
    code, _, err = run(capsys, "index", "--no-such-option")
    assert code == 2 and err.count("\n") == 1 and err.startswith("pixdex index: error:")


def test_an_uploaded_png_bomb_is_refused_naming_the_servers_own_option(tiny_store):
    """The server's pixel limit is --max-image-pixels; its message must not send users to --max-pixels."""
    from fastapi.testclient import TestClient
    from test_decode import huge_png, with_exif_chunk

    from pixdex.server.app import create_app
    from pixdex.server.limits import Limits

    client = TestClient(create_app(tiny_store, limits=Limits(max_image_pixels=40_000_000)),
                        base_url="http://127.0.0.1")  # the server checks the Host header
    bomb = with_exif_chunk(huge_png(30_000, 30_000), 6)
    resp = client.post("/api/search", files={"image": ("bomb.png", bomb, "image/png")})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "30000x30000 = 900 Mpx exceeds the limit of 40 Mpx (raise --max-image-pixels" in error


def test_no_option_of_any_subcommand_takes_a_bare_int_float_or_device():
    """Every numeric option has a rule from indexer.params, every --device is checked: a new option with
    `type=int` would accept -1 again."""
    import argparse

    from indexer.params import device_arg
    from pixdex.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    seen = 0
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.type not in (int, float), \
                f"pixdex {name} {action.option_strings}: bare {action.type}"
            if action.dest == "device":
                assert action.type is device_arg, f"pixdex {name} --device is not checked"
                seen += 1
    assert seen >= 7


@pytest.mark.parametrize("value", [True, None, "3", 2.5, float("nan"), float("inf"), 10**400, -1, 0])
def test_a_rule_refuses_every_kind_of_bad_value_with_a_short_message(value):
    from indexer.params import BATCH_SIZE

    with pytest.raises(PixdexError) as err:
        BATCH_SIZE.check(value, "batch_size")
    message = str(err.value)
    assert message.startswith("batch_size must be a whole number from 1 to 65536, not ")
    assert len(message) < 120 and "\n" not in message


def test_a_rule_accepts_what_it_allows():
    from indexer.params import BATCH_SIZE, COSINE, DEDUP, MAX_PIXELS

    assert BATCH_SIZE.check(3.0, "b") == 3 and isinstance(BATCH_SIZE.check(np.int64(7), "b"), int)
    assert MAX_PIXELS.check(0, "m") == 0 and COSINE.check(-1, "t") == -1.0
    assert DEDUP.check(1, "d") == 1.0
    with pytest.raises(PixdexError, match="above 0"):
        DEDUP.check(0, "dedup")
