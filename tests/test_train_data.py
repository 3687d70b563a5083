"""shapes-clip's training data: off-palette objects and grey images teach shape apart from colour,
without ever showing a held-out colour-shape pair (or anything near one)."""

from __future__ import annotations

import random

import numpy as np
import torch

from pixdex.demo import world
from pixdex.demo.train import (
    HELDOUT_HUE_MARGIN,
    OFF_CODE,
    OFF_PALETTE,
    _hue,
    _hue_distance,
    make_caption,
    positives,
    recolor_off_palette,
    scene_codes,
    to_grayscale,
)


def _training_scenes(n=3000, fraction=0.5):
    scenes = world.random_scenes(n, seed=3, exclude_combos=world.HELDOUT_COMBOS, two_object_prob=0.3)
    return recolor_off_palette(scenes, fraction, seed=4)


def test_off_palette_objects_keep_away_from_heldout_pairs():
    scenes = _training_scenes()
    off = [o for s in scenes for o in s.objects if o.color == OFF_PALETTE]
    assert 0.4 < len(off) / sum(len(s.objects) for s in scenes) < 0.6
    assert not any(s.combos() & set(world.HELDOUT_COMBOS) for s in scenes)
    heldout_hue = {shape: _hue(world.COLOR_RGB[c]) for c, shape in world.HELDOUT_COMBOS}
    named_hues = [_hue(rgb) for rgb in world.COLOR_RGB.values()]
    for o in off:
        r, g, b = o.rgb
        if max(r, g, b) - min(r, g, b) <= 10:  # a grey
            continue
        # never close to the held-out colour of its own shape (no "almost purple hexagon"), nor to any name
        assert _hue_distance(_hue(o.rgb), heldout_hue[o.shape]) >= HELDOUT_HUE_MARGIN, (o.shape, o.rgb)
        assert min(_hue_distance(_hue(o.rgb), h) for h in named_hues) >= 14, o.rgb
    # every shape gets several off-palette hues, so its look is not tied to a few colours
    for shape in world.SHAPES:
        hues = {round(_hue(o.rgb) / 30) for o in off if o.shape == shape and max(o.rgb) - min(o.rgb) > 10}
        assert len(hues) >= 3, shape


def test_recolouring_is_deterministic_and_optional():
    scenes = world.random_scenes(50, seed=1, exclude_combos=world.HELDOUT_COMBOS)
    assert recolor_off_palette(scenes, 0.0, seed=0) == scenes
    assert recolor_off_palette(scenes, 0.3, seed=0) == recolor_off_palette(scenes, 0.3, seed=0)
    once = recolor_off_palette(scenes, 1.0, seed=0)
    assert all(o.color == OFF_PALETTE for s in once for o in s.objects)
    assert [o.shape for s in once for o in s.objects] == [o.shape for s in scenes for o in s.objects]
    assert (scene_codes(once[0])[0, 0] == OFF_CODE) and (scene_codes(scenes[0])[0, 0] < OFF_CODE)


def test_captions_of_off_palette_objects_name_no_colour():
    rnd = random.Random(0)
    obj = {"color": OFF_PALETTE, "shape": "star", "size": "small", "position": "left"}
    codes = torch.tensor([[[OFF_CODE, world.SHAPES.index("star"), 0, 0], [-2, -2, -2, -2]]])
    named = 0
    for _ in range(300):
        text, cons = make_caption([obj], rnd)
        words = set(text.replace(".", "").split())
        assert not words & set(world.COLORS) and OFF_PALETTE not in words, text
        assert cons[0, 0] == -1
        named += "star" in words
        assert positives(codes, torch.from_numpy(cons[None]).long())[0, 0], text  # the caption is true of it
    assert named > 250  # a colour-only caption turns into a shape caption
    red_star, _ = make_caption([{**obj, "color": "red"}], random.Random(1), include={"color"})
    assert "red" in red_star
    _, red_cons = make_caption([{**obj, "color": "red"}], random.Random(1), include={"color", "shape"})
    assert not positives(codes, torch.from_numpy(red_cons[None]).long())[0, 0]  # "a red star" is not it


def test_to_grayscale_makes_equal_channels():
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    x = torch.randn(4, 3, 8, 8)
    g = to_grayscale(x, mean, std)
    rgb = g * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb[:, 0], rgb[:, 1])
    torch.testing.assert_close(rgb[:, 1], rgb[:, 2])
    # luma of the original pixels
    orig = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    want = 0.299 * orig[:, 0] + 0.587 * orig[:, 1] + 0.114 * orig[:, 2]
    torch.testing.assert_close(rgb[:, 0], want)
    assert np.isfinite(g.numpy()).all()
