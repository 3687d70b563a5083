"""The fast preprocessing path reproduces the model's own processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from transformers import CLIPImageProcessor, SiglipImageProcessor

from indexer.pixels import normalise, plan_for, resize_crop

PROCESSORS = {
    "clip-224": CLIPImageProcessor(),
    "clip-64": CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
    "siglip-224": SiglipImageProcessor(),
}


def photo(shape, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).filter(
        ImageFilter.GaussianBlur(2))


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (100, 90), (50, 300), (40, 40)])
def test_uint8_path_equals_processor(name, shape):
    proc = PROCESSORS[name]
    plan = plan_for(proc)
    assert plan is not None
    img = photo(shape)
    ref = proc(images=[img], return_tensors="np")["pixel_values"]
    mine = normalise(torch.from_numpy(resize_crop(img, plan))[None], plan).numpy()
    assert mine.shape == ref.shape
    assert np.abs(mine - ref).max() < 1e-5


def test_unsupported_processors_fall_back():
    assert plan_for(CLIPImageProcessor(do_center_crop=False)) is None  # ragged sizes
    assert plan_for(CLIPImageProcessor(do_resize=False)) is None
