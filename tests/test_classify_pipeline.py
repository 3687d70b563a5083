"""ZeroShotClassifier against transformers' zero-shot-image-classification pipeline, side by side."""

from __future__ import annotations

import base64
import http.server
import io
import socket
import threading
from functools import partial
from pathlib import Path

import pytest
from models import save_random_siglip, save_random_siglip2, with_logit_params
from PIL import Image

from classify.classifier import ZeroShotClassifier
from indexer.errors import PixdexError

LABEL_SETS = [
    ["red circle", "blue square", "green triangle", "yellow star"],
    ["a shape", "circle", "square", "star", "hexagon", "cross", "triangle"],
]
TEMPLATES = ["This is a photo of {}.", "{}", "a drawing of a {} on the left"]


@pytest.fixture(scope="module")
def siglip(tmp_path_factory) -> str:
    return with_logit_params(str(save_random_siglip(tmp_path_factory.mktemp("m") / "siglip")), 2.3, -1.5)


@pytest.fixture(scope="module")
def siglip2(tmp_path_factory) -> str:
    return with_logit_params(str(save_random_siglip2(tmp_path_factory.mktemp("m") / "siglip2")), 2.0, 0.7)


@pytest.fixture(scope="module")
def images(shapes_dir) -> list[str]:
    return sorted(str(p) for p in Path(shapes_dir).iterdir() if p.suffix in (".png", ".jpg"))[:4]


def pipeline_for(model: str):
    from transformers import pipeline

    return pipeline("zero-shot-image-classification", model=model)


def assert_same(ours, theirs, tol: float = 1e-5) -> None:
    """Labels identical in order and scores within tol, for one image or many."""
    if theirs and isinstance(theirs[0], dict):
        ours, theirs = [ours], [theirs]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert all(set(x) == {"score", "label"} and isinstance(x["score"], float) for x in a)
        assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) <= tol


def check_model_matches_pipeline(model: str, images: list[str]) -> None:
    pipe = pipeline_for(model)
    clf = ZeroShotClassifier(model, device="cpu")
    for labels in LABEL_SETS:
        for template in TEMPLATES:
            theirs = pipe(images, candidate_labels=labels, hypothesis_template=template)
            assert_same(clf(images, candidate_labels=labels, hypothesis_template=template), theirs)
    # default template, one image in -> one list out
    assert_same(clf(images[0], candidate_labels=LABEL_SETS[0]),
                pipe(images[0], candidate_labels=LABEL_SETS[0]))


def test_random_clip_matches_pipeline(tiny_clip, images):
    check_model_matches_pipeline(tiny_clip, images)


def test_random_siglip_matches_pipeline(siglip, images):
    clf = ZeroShotClassifier(siglip, device="cpu")
    assert clf.scoring.family == "siglip" and clf.scoring.logit_bias == pytest.approx(-1.5)
    check_model_matches_pipeline(siglip, images)


def test_random_siglip2_matches_pipeline(siglip2, images):
    check_model_matches_pipeline(siglip2, images)


def test_shapes_clip_matches_pipeline(shapes_clip, images):
    check_model_matches_pipeline(shapes_clip, images)


def test_siglip_scores_are_independent_sigmoids(siglip, images):
    """SigLIP scores do not sum to one and a label's score does not depend on the other labels."""
    clf = ZeroShotClassifier(siglip, device="cpu")
    both = {r["label"]: r["score"] for r in clf(images[0], candidate_labels=["circle", "square"])}
    alone = clf(images[0], candidate_labels=["circle"])
    assert alone[0]["score"] == pytest.approx(both["circle"], abs=1e-6)
    assert sum(both.values()) != pytest.approx(1.0, abs=1e-3)


def test_every_input_kind_gives_the_same_result(tiny_clip, images):
    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    labels = LABEL_SETS[1]
    data = Path(images[0]).read_bytes()
    expected = clf(images[0], candidate_labels=labels)
    for item in (Path(images[0]), Image.open(images[0]), data, base64.b64encode(data).decode()):
        assert_same(clf(item, candidate_labels=labels), expected, tol=1e-6)


def test_many_images_batched_equal_one_at_a_time(tiny_clip, images):
    clf = ZeroShotClassifier(tiny_clip, device="cpu", batch_size=3)
    many = clf(images, candidate_labels=LABEL_SETS[0])
    assert len(many) == len(images)
    for img, res in zip(images, many):
        assert_same(res, clf(img, candidate_labels=LABEL_SETS[0]), tol=1e-5)


def test_label_embeddings_are_computed_once(tiny_clip, images, monkeypatch):
    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    calls = []
    original = clf.encoder.encode_texts
    monkeypatch.setattr(clf.encoder, "encode_texts",
                        lambda texts, **kw: calls.append(list(texts)) or original(texts))
    for img in images:
        clf(img, candidate_labels=LABEL_SETS[0])
    clf(images, candidate_labels=LABEL_SETS[1], hypothesis_template="{}")
    assert calls == [[f"This is a photo of {x}." for x in LABEL_SETS[0]], LABEL_SETS[1]]


def test_top_k_and_ties_in_label_order(tiny_clip, images):
    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    full = clf(images[0], candidate_labels=LABEL_SETS[1])
    assert clf(images[0], candidate_labels=LABEL_SETS[1], top_k=2) == full[:2]
    # "star " and "star" tokenize alike, so they tie: the earlier label comes first
    # (the pipeline's stable sort)
    for labels in (["star ", "circle", "star"], ["star", "circle", "star "]):
        res = clf(images[0], candidate_labels=labels)
        stars = [r for r in res if r["label"].strip() == "star"]
        assert stars[0]["score"] == stars[1]["score"]
        assert [r["label"] for r in stars] == [x for x in labels if x.strip() == "star"]
        assert_same(res, pipeline_for(tiny_clip)(images[0], candidate_labels=labels), tol=1e-6)


@pytest.mark.parametrize("labels, message", [
    ([], "candidate_labels is empty"),
    (None, "candidate_labels is empty"),
    (["circle", 3], "candidate label 3 is not a string"),
])
def test_bad_labels_are_one_line_errors(tiny_clip, images, labels, message):
    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    with pytest.raises(PixdexError, match=message) as err:
        clf(images[0], candidate_labels=labels)
    assert "\n" not in str(err.value)


def test_unreadable_images_are_one_line_errors(tiny_clip, tmp_path):
    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    for item, what in [(tmp_path / "missing.png", "missing.png"), (broken, "broken.png"),
                       (b"not an image", "<bytes>")]:
        with pytest.raises(PixdexError, match=what) as err:
            clf(item, candidate_labels=["a", "b"])
        assert "\n" not in str(err.value)
    with pytest.raises(PixdexError, match="top_k"):
        clf(Image.new("RGB", (8, 8)), candidate_labels=["a"], top_k=0)
    with pytest.raises(PixdexError, match="placeholder"):
        clf(Image.new("RGB", (8, 8)), candidate_labels=["a"], hypothesis_template="no label here")


@pytest.fixture
def http_root(shapes_dir):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(shapes_dir))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_inputs_and_timeout(tiny_clip, images, http_root):
    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    url = f"{http_root}/{Path(images[1]).name}"
    assert_same(clf(url, candidate_labels=LABEL_SETS[0], timeout=5),
                clf(images[1], candidate_labels=LABEL_SETS[0]), tol=1e-6)
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with pytest.raises(PixdexError, match="cannot fetch image URL"):
            clf(f"http://127.0.0.1:{silent.getsockname()[1]}/x.png", candidate_labels=["a"], timeout=0.3)
    finally:
        silent.close()


def test_png_bytes_in_memory(tiny_clip):
    clf = ZeroShotClassifier(tiny_clip, device="cpu")
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    res = clf(buf.getvalue(), candidate_labels=["red", "blue"])
    assert sorted(r["label"] for r in res) == ["blue", "red"]
    assert sum(r["score"] for r in res) == pytest.approx(1.0, abs=1e-5)
