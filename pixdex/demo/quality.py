"""Measured quality of a shapes-world CLIP model (by default the shipped ``shapes-clip``).

`evaluate` renders a FRESH balanced collection with `EVAL_SEED` (a seed that training never
uses: ``pixdex.demo.train`` refuses it), writes it to a temporary folder as JPEG/PNG files
plus labels.csv exactly like ``pixdex shapes`` does, reads the files back, and scores the
model with plain zero-shot prompts through indexer's ``Encoder`` (the model's own processor):

* ``color_top1``: single-object images, prompts ``"a photo of a red shape."`` over all colours;
* ``shape_top1``: single-object images, prompts ``"a photo of a circle."`` over all shapes;
* ``heldout_top1``: images of the held-out colour-shape pairs (never seen in training),
  prompts ``"a photo of a red circle."`` over ALL colour x shape labels;
* ``seen_top1``: the same 48-way task on images of combos seen in training (for comparison);
* ``p_at_10``: text-to-image precision@10 of the queries ``"a red circle"`` (every colour x
  shape pair) over the whole mixed collection (single and two-object images); a hit is an
  image containing an object of that colour AND shape. ``p_at_10_heldout`` restricts the
  mean to the held-out pairs.

Everything is deterministic (fixed seed, eval mode, no sampling).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from indexer.encoder import Encoder
from pixdex.demo import world

# Never used for training data (train.py rejects it); keep it fixed so figures are comparable.
EVAL_SEED = 7_000_003

# Single-object images per colour-shape pair, extra ones per held-out pair, two-object images.
DEFAULT_PER_COMBO = 8
DEFAULT_HELDOUT_EXTRA = 12
DEFAULT_TWO_OBJECT = 96


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def color_prompt(color: str) -> str:
    return f"a photo of {article(color)} {color} shape."


def shape_prompt(shape: str) -> str:
    return f"a photo of {article(shape)} {shape}."


def combo_prompt(color: str, shape: str) -> str:
    return f"a photo of {article(color)} {color} {shape}."


def combo_query(color: str, shape: str) -> str:
    return f"{article(color)} {color} {shape}"


def default_model_dir() -> str:
    from pixdex.demo.assets import shapes_clip_path

    return shapes_clip_path()


@lru_cache(maxsize=4)
def load(model_dir: str | None = None, device: str = "cpu") -> Encoder:
    """indexer's Encoder for a saved shapes-clip directory: the same features the store and search use."""
    return Encoder(str(model_dir or default_model_dir()), device=device)


def _text_features(encoder: Encoder, texts: list[str]):
    import torch

    return torch.from_numpy(encoder.encode_texts(texts))


def _image_features(encoder: Encoder, paths: list[Path], batch_size: int = 128):
    import torch

    return torch.from_numpy(encoder.encode_images([str(p) for p in paths], batch_size=batch_size))


def eval_scenes(seed: int = EVAL_SEED, per_combo: int = DEFAULT_PER_COMBO,
                heldout_extra: int = DEFAULT_HELDOUT_EXTRA, two_object: int = DEFAULT_TWO_OBJECT):
    """The balanced evaluation scenes: (singles, two-object scenes)."""
    rng = np.random.default_rng(seed)
    singles = [world.random_scene(rng, combo=c, n_objects=1) for c in world.ALL_COMBOS
               for _ in range(per_combo)]
    singles += [world.random_scene(rng, combo=c, n_objects=1) for c in world.HELDOUT_COMBOS
                for _ in range(heldout_extra)]
    # Two-object scenes: every pair appears about equally often.
    pairs = []
    combos = list(world.ALL_COMBOS)
    while len(pairs) < two_object:
        order = [combos[i] for i in rng.permutation(len(combos))]
        pairs += [(order[i], order[i + 1]) for i in range(0, len(order) - 1, 2)]
    doubles = []
    for a, b in pairs[:two_object]:
        scene = world.random_scene(rng, allowed_combos=[a, b], combo=a, n_objects=2)
        doubles.append(scene)
    return singles, doubles


def evaluate(model_dir: str | None = None, seed: int = EVAL_SEED, n: int = DEFAULT_PER_COMBO,
             device: str = "cpu", heldout_extra: int = DEFAULT_HELDOUT_EXTRA,
             two_object: int = DEFAULT_TWO_OBJECT, workdir: str | None = None) -> dict:
    """Quality figures of the model in `model_dir` (default: shipped shapes-clip); see module doc.

    `n` is the number of single-object images per colour-shape pair (48 pairs).
    """
    import torch

    torch.manual_seed(0)
    encoder = load(str(model_dir or default_model_dir()), device)
    singles, doubles = eval_scenes(seed, n, heldout_extra, two_object)
    scenes = singles + doubles
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        labels = world.write_scenes(tmp, scenes, prefix="eval")
        rows = world.read_labels(labels)
        paths = [Path(tmp) / r["file"] for r in rows]
        img = _image_features(encoder, paths)
    objs = [world.row_objects(r) for r in rows]
    n_single = len(singles)
    heldout = set(world.HELDOUT_COMBOS)

    def top1(prompts, truths, idx):
        t = _text_features(encoder, prompts)
        pred = (img[idx] @ t.T).argmax(dim=1).tolist()
        return float(np.mean([p == truths[i] for p, i in zip(pred, idx)]))

    single_idx = list(range(n_single))
    color_truth = {i: world.COLORS.index(objs[i][0]["color"]) for i in single_idx}
    shape_truth = {i: world.SHAPES.index(objs[i][0]["shape"]) for i in single_idx}
    combo_truth = {i: world.ALL_COMBOS.index((objs[i][0]["color"], objs[i][0]["shape"])) for i in single_idx}
    balanced = single_idx[: n * len(world.ALL_COMBOS)]
    held_idx = [i for i in single_idx if (objs[i][0]["color"], objs[i][0]["shape"]) in heldout]
    seen_idx = [i for i in balanced if (objs[i][0]["color"], objs[i][0]["shape"]) not in heldout]

    combo_prompts = [combo_prompt(c, s) for c, s in world.ALL_COMBOS]
    result = {
        "color_top1": top1([color_prompt(c) for c in world.COLORS], color_truth, balanced),
        "shape_top1": top1([shape_prompt(s) for s in world.SHAPES], shape_truth, balanced),
        "heldout_top1": top1(combo_prompts, combo_truth, held_idx),
        "seen_top1": top1(combo_prompts, combo_truth, seen_idx),
    }
    # Text-to-image precision@10 over the whole mixed collection.
    q = _text_features(encoder, [combo_query(c, s) for c, s in world.ALL_COMBOS])
    top = (q @ img.T).topk(10, dim=1).indices.tolist()
    has = [{(o["color"], o["shape"]) for o in ob} for ob in objs]
    p10 = [np.mean([combo in has[j] for j in top[k]]) for k, combo in enumerate(world.ALL_COMBOS)]
    result["p_at_10"] = float(np.mean(p10))
    result["p_at_10_heldout"] = float(np.mean([p for p, c in zip(p10, world.ALL_COMBOS) if c in heldout]))
    result["eval"] = {
        "seed": seed,
        "images": len(scenes),
        "single_object": n_single,
        "two_object": len(doubles),
        "heldout_images": len(held_idx),
        "queries": len(world.ALL_COMBOS),
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


def predict(model_dir: str | None = None, collection_dir: str | Path | None = None, n: int = 5,
            seed: int = EVAL_SEED + 1, labels: list[str] | None = None, device: str = "cpu") -> list[dict]:
    """Zero-shot predictions for the first `n` images of a collection (default: a fresh tiny one).

    Each item: {"file", "truth", "predicted", "score"}; labels default to every "colour shape"
    pair, scored with the prompt "a photo of a {label}." and softmax over labels.
    """
    import torch

    encoder = load(str(model_dir or default_model_dir()), device)
    labels = labels or [f"{c} {s}" for c, s in world.ALL_COMBOS]
    prompts = [f"a photo of {article(lab)} {lab}." for lab in labels]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(collection_dir) if collection_dir else Path(tmp)
        if not collection_dir:
            world.write_collection(folder, count=n, seed=seed)
        rows = world.read_labels(folder / "labels.csv")[:n]
        img = _image_features(encoder, [folder / r["file"] for r in rows])
    txt = _text_features(encoder, prompts)
    scale = encoder.logit_scale
    probs = torch.softmax(scale * img @ txt.T, dim=1)
    out = []
    for r, p in zip(rows, probs):
        k = int(p.argmax())
        truth = " and ".join(f"{o['color']} {o['shape']}" for o in world.row_objects(r))
        out.append({"file": r["file"], "truth": truth, "predicted": labels[k],
                    "score": round(float(p[k]), 4)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixdex.demo.quality", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", nargs="?", default=None)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--n", type=int, default=DEFAULT_PER_COMBO)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(evaluate(args.model_dir, seed=args.seed, n=args.n), indent=2))
    for p in predict(args.model_dir):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
