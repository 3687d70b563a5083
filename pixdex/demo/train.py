"""Train ``shapes-clip``: a small ``transformers.CLIPModel`` learned from scratch on the shapes world.

    python -m pixdex.demo.train [--out DIR] [--seed S] [--steps N] [--device auto|cpu|cuda]

Pipeline:

1. Draw ``--train-size`` random scenes with ``--seed`` from every colour-shape pair EXCEPT
   ``world.HELDOUT_COMBOS`` (those never appear in any training image or caption).
2. Render each scene, encode it as JPEG/PNG, decode it and run the ``CLIPImageProcessor``:
   exactly the path real files take. The processed tensors are kept in memory (fp16).
3. Train contrastively with the CLIP loss. Captions are drawn afresh at every step from each
   image's labels with varied templates ("a photo of a small red circle on the left",
   "a red shape", "something red", "a circle", two-object captions, ...). Identical captions
   in a batch are positives, and more generally every caption that truthfully describes an
   image in the batch is a positive for it: targets are soft (uniform over the positives).
   Random horizontal/vertical flips swap left/right and top/bottom in the labels.
   A fraction of objects (``--off-palette``) is drawn in colours that none of the eight
   colour words names (lime, teal, azure, indigo, magenta, greys) and a fraction of images
   (``--grayscale``) is shown in grey; their captions never name a colour. Every shape then
   comes in many hues, so the vision tower has to see shape apart from colour: without
   this it learned shortcuts such as "a round red thing is a hexagon" (red circles are held
   out), and held-out images were misread by shape.
4. Save model (safetensors), tokenizer and image processor so that ``AutoModel``,
   ``AutoProcessor`` and ``pipeline("zero-shot-image-classification")`` load the folder
   offline, then measure quality (``pixdex.demo.quality``) and write ``training.json``.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pixdex.demo import world
from pixdex.demo.assets import SHAPES_CLIP_DIR
from pixdex.demo.quality import EVAL_SEED, article

ATTRS = ("color", "shape", "size", "position")
VOCABS = (world.COLORS, world.SHAPES, world.SIZES, world.POSITIONS)
FLIP_X = {"left": "right", "right": "left"}
FLIP_Y = {"top": "bottom", "bottom": "top"}

PREFIXES = [
    ("", 0.22),
    ("a photo of ", 0.3),
    ("this is a photo of ", 0.14),
    ("a picture of ", 0.08),
    ("an image of ", 0.08),
    ("a drawing of ", 0.05),
    ("there is ", 0.05),
    ("a photo showing ", 0.04),
    ("a photo of the ", 0.04),
]


# ---------------------------------------------------------------- image processor / data


def build_image_processor(image_size: int):
    try:  # transformers >= 5 without torchvision: the PIL backend is the CLIPImageProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
    except ImportError:  # pragma: no cover
        from transformers import CLIPImageProcessor as Proc
    from PIL import Image

    return Proc(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=Image.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def _render_chunk(args):
    scenes, image_size, render_size = args
    proc = build_image_processor(image_size)
    images = [world.roundtrip(s, render_size) for s in scenes]
    px = proc(images=images, return_tensors="np")["pixel_values"]
    return np.asarray(px, dtype=np.float16)


# Colour label of objects drawn off the palette: no caption names it, so its code matches no colour word.
OFF_PALETTE = "other"
OFF_CODE = len(world.COLORS)
# Hues (degrees) at least 15 degrees from every named colour's (red 358, orange 31, yellow 54, green 127,
# cyan 183, blue 230, purple 279, pink 325), jittered by at most 8: lime, spring green, azure, indigo,
# magenta.
OFF_HUES = (90.0, 155.0, 207.0, 254.0, 302.0)
OFF_HUE_JITTER = 8.0
# An off-palette object whose shape belongs to a held-out pair keeps this far (degrees) from that pair's
# colour, so nothing close to e.g. a purple hexagon is ever shown in training.
HELDOUT_HUE_MARGIN = 40.0


def _hue(rgb: tuple[int, int, int]) -> float:
    return 360.0 * colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0]


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def off_palette_hues(shape: str) -> list[float]:
    """The off-palette hues allowed for `shape`: those far from its held-out colour, if it has one."""
    avoid = [_hue(world.COLOR_RGB[c]) for c, s in world.HELDOUT_COMBOS if s == shape]
    return [h for h in OFF_HUES
            if all(_hue_distance(h, a) >= HELDOUT_HUE_MARGIN + OFF_HUE_JITTER for a in avoid)]


def off_palette_rgb(rng: np.random.Generator, shape: str, background_level: float) -> tuple[int, int, int]:
    """A colour no colour word of the shapes world names: an in-between hue, or a grey that stands out."""
    hues = off_palette_hues(shape)
    if not hues or rng.random() < 0.25:
        v = int(rng.integers(140, 250)) if background_level < 128 else int(rng.integers(10, 110))
        return tuple(int(np.clip(v + rng.integers(-4, 5), 0, 255)) for _ in range(3))
    hue = (hues[int(rng.integers(len(hues)))] + rng.uniform(-OFF_HUE_JITTER, OFF_HUE_JITTER)) / 360.0
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 0.9), rng.uniform(0.65, 0.95))
    return tuple(int(round(255 * c)) for c in rgb)


def recolor_off_palette(scenes: list[world.Scene], fraction: float, seed: int) -> list[world.Scene]:
    """`scenes` with each object, with probability `fraction`, redrawn in an off-palette colour."""
    if fraction <= 0:
        return scenes
    rng = np.random.default_rng(seed)
    out = []
    for scene in scenes:
        level = float(np.mean(scene.bg_rgb))
        objects = tuple(dataclasses.replace(o, color=OFF_PALETTE, rgb=off_palette_rgb(rng, o.shape, level))
                        if rng.random() < fraction else o for o in scene.objects)
        out.append(dataclasses.replace(scene, objects=objects))
    return out


def _code(attr: int, value: str) -> int:
    return OFF_CODE if attr == 0 and value == OFF_PALETTE else VOCABS[attr].index(value)


def scene_codes(scene: world.Scene) -> np.ndarray:
    """[2, 4] int8 attribute indices of the (up to two) objects; -2 marks a missing object."""
    codes = np.full((2, 4), -2, dtype=np.int8)
    for k, obj in enumerate(scene.objects[:2]):
        codes[k] = [_code(a, getattr(obj, name)) for a, name in enumerate(ATTRS)]
    return codes


def to_grayscale(x, mean, std):
    """Normalised pixel batch [N, 3, H, W] shown in grey (ITU-R 601 luma), normalised again."""
    import torch

    mean = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    rgb = x * std + mean
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (luma - mean) / std


def render_training_set(scenes, image_size: int, render_size: int, workers: int, log=print):
    chunks = [scenes[i : i + 256] for i in range(0, len(scenes), 256)]
    t0 = time.time()
    out = []
    if workers > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for i, arr in enumerate(ex.map(_render_chunk, [(c, image_size, render_size) for c in chunks])):
                out.append(arr)
                if (i + 1) % 20 == 0:
                    log(f"  rendered {sum(len(a) for a in out)}/{len(scenes)} ({time.time() - t0:.0f}s)")
    else:
        for c in chunks:
            out.append(_render_chunk((c, image_size, render_size)))
    return np.concatenate(out)


# ---------------------------------------------------------------- captions


def _object_phrase(obj: dict, rnd: random.Random, include: set[str], bare: bool) -> str:
    adjs = []
    if "size" in include:
        adjs.append(obj["size"])
    if "color" in include:
        adjs.append(obj["color"])
    pos = f" {world.POSITION_PHRASE[obj['position']]}" if "position" in include else ""
    if "shape" in include:
        noun = obj["shape"]
    else:
        if adjs and rnd.random() < 0.2:
            return "something " + " and ".join(adjs) + pos
        noun = rnd.choices(["shape", "object", "thing"], [0.65, 0.25, 0.1])[0]
    words = " ".join(adjs + [noun])
    if bare:
        return words + pos
    art = article(words) if rnd.random() < 0.85 else "a"
    return f"{art} {words}{pos}"


def _include(rnd: random.Random) -> set[str]:
    while True:
        inc = {a for a, p in zip(ATTRS, (0.75, 0.75, 0.3, 0.3)) if rnd.random() < p}
        if inc:
            return inc


def make_caption(objs: list[dict], rnd: random.Random,
                 include: set[str] | None = None) -> tuple[str, np.ndarray]:
    """A random true caption of a scene, and its constraints ([2, 4], -1 = any, -3 = no 2nd object).

    `include` forces which attributes of a single object are named (used for the label bank).
    """
    cons = np.full((2, 4), -3, dtype=np.int8)
    full = rnd.random() < 0.12
    if include is not None:
        chosen = objs[:1]
    elif len(objs) == 2 and rnd.random() < 0.55:
        chosen = list(objs) if rnd.random() < 0.5 else [objs[1], objs[0]]
    else:
        chosen = [rnd.choice(objs)]
    prefix = rnd.choices([p for p, _ in PREFIXES], [w for _, w in PREFIXES])[0]
    bare = prefix.endswith("of ") and rnd.random() < 0.2  # "this is a photo of red circle."
    parts = []
    for k, obj in enumerate(chosen):
        inc = include if include is not None else set(ATTRS) if full else _include(rnd)
        if obj["color"] == OFF_PALETTE:  # no colour word fits: name the shape instead
            inc = (inc - {"color"}) or {"shape"}
        parts.append(_object_phrase(obj, rnd, inc, bare and k == 0))
        cons[k] = [VOCABS[a].index(obj[name]) if name in inc else -1 for a, name in enumerate(ATTRS)]
    text = prefix + " and ".join(parts)
    if prefix == "a photo of the ":
        text = text.replace("the a ", "the ").replace("the an ", "the ").replace("the something", "something")
    if rnd.random() < 0.5:
        text += "."
    return text, cons


def label_bank() -> list[tuple[dict, set[str]]]:
    """Single-attribute and colour-shape descriptions added as extra captions to every batch.

    Contrasting each image against every shape, colour, size, position and (seen) colour-shape
    caption, besides the batch's own captions, gives a dense signal each step. Held-out pairs
    are never among them.
    """
    any_obj = {"color": "red", "shape": "circle", "size": "small", "position": "left"}
    bank = []
    for shape in world.SHAPES:
        bank.append(({**any_obj, "shape": shape}, {"shape"}))
    for color in world.COLORS:
        bank.append(({**any_obj, "color": color}, {"color"}))
    for size in world.SIZES:
        bank.append(({**any_obj, "size": size}, {"size"}))
    for pos in world.POSITIONS:
        bank.append(({**any_obj, "position": pos}, {"position"}))
    for color, shape in world.ALL_COMBOS:
        if (color, shape) not in world.HELDOUT_COMBOS:
            bank.append(({**any_obj, "color": color, "shape": shape}, {"color", "shape"}))
    return bank


def positives(img_codes, cap_cons):
    """[B_text, B_img] bool: caption j truthfully describes image i."""
    import torch

    obj = img_codes[None, None]  # [1, 1, B, 2, 4]
    c = cap_cons[:, :, None, None]  # [B, 2, 1, 1, 4]
    ok = ((c == -1) | (c == obj)).all(-1) & (img_codes[None, None, :, :, 0] >= 0)  # [B, 2, B, 2]
    first = ok[:, 0]  # [Bt, Bi, 2]
    second = ok[:, 1]
    single = first.any(-1)
    both = (first[..., 0] & second[..., 1]) | (first[..., 1] & second[..., 0])
    has_second = (cap_cons[:, 1, 0] != -3)[:, None]
    return torch.where(has_second, both, single)


# ---------------------------------------------------------------- model


def build_model(vocab_size: int, bos: int, eos: int, args):
    from transformers import CLIPConfig, CLIPModel

    h = args.hidden
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=args.text_layers,
            num_attention_heads=args.heads,
            max_position_embeddings=args.max_text_len,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
            projection_dim=args.projection_dim,
        ),
        vision_config=dict(
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=args.vision_layers,
            num_attention_heads=args.heads,
            image_size=args.image_size,
            patch_size=args.patch_size,
            projection_dim=args.projection_dim,
        ),
        projection_dim=args.projection_dim,
    )
    return CLIPModel(config)


def save(model, tokenizer, image_processor, out_dir: Path) -> None:
    """Everything `from_pretrained` needs: weights (safetensors), config, tokenizer, image processor."""
    from transformers import CLIPProcessor

    from pixdex.demo.tokenizer import write_tokenizer_files

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    write_tokenizer_files(out_dir)
    weights = out_dir / "model.safetensors"
    if weights.exists():
        weights.chmod(0o644)


def _describe(cfg) -> dict:
    t, v = cfg.text_config, cfg.vision_config
    return {
        "architecture": "CLIPModel",
        "projection_dim": cfg.projection_dim,
        "text": {"vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "layers": t.num_hidden_layers,
                 "heads": t.num_attention_heads, "max_position_embeddings": t.max_position_embeddings},
        "vision": {"image_size": v.image_size, "patch_size": v.patch_size, "hidden_size": v.hidden_size,
                   "layers": v.num_hidden_layers, "heads": v.num_attention_heads},
    }


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m pixdex.demo.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(SHAPES_CLIP_DIR), help="output folder (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training data and initialisation")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--train-size", type=int, default=24000, help="number of pre-rendered training images")
    p.add_argument("--two-object-prob", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--projection-dim", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None,
                   help="model input side, the processor resizes to it "
                   "(default: the --init model's, else 64)")
    p.add_argument("--patch-size", type=int, default=None, help="default: the --init model's, else 8")
    p.add_argument("--render-size", type=int, default=128, help="side of the rendered images")
    p.add_argument("--max-text-len", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="processes rendering the training set")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: 2, or 1 when the machine is already busy)")
    p.add_argument("--cache", default=None,
                   help="optional .npz file caching the rendered training set "
                   "(reused when the settings match)")
    p.add_argument("--save-every", type=int, default=0, help="also save the model every N steps")
    p.add_argument("--fp16", action="store_true", help="store the weights in float16")
    p.add_argument("--no-eval", action="store_true", help="skip the quality measurement")
    p.add_argument("--eval-n", type=int, default=None, help="images per colour-shape pair in the evaluation")
    p.add_argument("--no-bank", action="store_true", help="do not add the label-bank captions to batches")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--init", default=None,
                   help="start from this saved shapes-clip folder instead of random weights "
                   "(continue training)")
    p.add_argument("--off-palette", type=float, default=0.25,
                   help="fraction of training objects drawn in colours no colour word names "
                   "(captions omit colour)")
    p.add_argument("--grayscale", type=float, default=0.1,
                   help="fraction of training images shown in grey at each step (captions omit colour)")
    p.add_argument("--hard-batches", type=float, default=0.0,
                   help="fraction of steps whose batch holds only two colours, "
                        "so captions must be told apart by shape, size and position")
    args = p.parse_args(argv)
    if args.seed == EVAL_SEED:
        p.error(f"seed {EVAL_SEED} is reserved for evaluation (pixdex.demo.quality.EVAL_SEED)")
    init_vision = _init_vision(args.init) if args.init else {}
    args.image_size = args.image_size or init_vision.get("image_size", 64)
    args.patch_size = args.patch_size or init_vision.get("patch_size", 8)
    return args


def _init_vision(model_dir: str) -> dict:
    """The vision config (image_size, patch_size, ...) of a saved model folder, read without torch."""
    return json.loads((Path(model_dir) / "config.json").read_text())["vision_config"]


def adapt_resolution(model, image_size: int, patch_size: int):
    """`model` with its patch kernel resampled to take `image_size` pixels in patches of `patch_size`.

    The token grid must stay the same (image_size / patch_size unchanged) and the patch grow by an
    integer factor f. The new kernel repeats each weight over an f x f block divided by f^2, so on
    f-times larger images the model starts as the same function of 2x2-averaged pixels and
    continued training can then learn to use the finer detail (e.g. circle vs hexagon at 64 px).
    """
    import torch
    from transformers import CLIPModel

    vc = model.config.vision_config
    if (vc.image_size, vc.patch_size) == (image_size, patch_size):
        return model
    if image_size * vc.patch_size != vc.image_size * patch_size or patch_size % vc.patch_size:
        raise ValueError(f"cannot adapt a {vc.image_size}px/{vc.patch_size} model "
                         f"to {image_size}px/{patch_size}: "
                         "the patch must grow by an integer factor and the token grid stay the same")
    f = patch_size // vc.patch_size
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.vision_config.image_size = image_size
    config.vision_config.patch_size = patch_size
    state = model.state_dict()
    key = "vision_model.embeddings.patch_embedding.weight"
    state[key] = state[key].repeat_interleave(f, 2).repeat_interleave(f, 3) / (f * f)
    adapted = CLIPModel(config)
    adapted.load_state_dict(state)
    with torch.no_grad():
        adapted.logit_scale.copy_(model.logit_scale)
    return adapted.to(next(model.parameters()).device)


@dataclasses.dataclass
class TrainingSet:
    """The rendered training images with their labels: pixels, per-object codes and attribute dicts."""

    scenes: list
    pixels: np.ndarray
    codes: np.ndarray
    objs: list[list[dict]]


def pick_threads(requested: int) -> int:
    """Two threads on an idle 2-core machine; one when other work competes for the cores.

    Oversubscribed intra-op threads slow a small model down many times over.
    """
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= 1.0
    return 1 if busy else min(2, cores)


def load_training_set(args, log) -> TrainingSet:
    """Draw the scenes and render them (pure numpy/PIL, in worker processes before torch spins up threads)."""
    scenes = world.random_scenes(args.train_size, seed=args.seed, exclude_combos=world.HELDOUT_COMBOS,
                                 two_object_prob=args.two_object_prob)
    scenes = recolor_off_palette(scenes, args.off_palette, args.seed + 4)
    assert not any(s.combos() & set(world.HELDOUT_COMBOS) for s in scenes)
    key = f"{args.seed}-{args.train_size}-{args.two_object_prob}-{args.off_palette}-{args.image_size}"
    key += f"-{args.render_size}"
    key += "-" + hashlib.sha1("|".join(repr(s) for s in scenes[:200]).encode()).hexdigest()[:12]
    pixels = None
    if args.cache and Path(args.cache).is_file():
        with np.load(args.cache) as z:
            if str(z["key"]) == key:
                pixels = z["pixels"]
                log(f"loaded rendered training set from {args.cache}")
    if pixels is None:
        log(f"rendering {len(scenes)} training images ({args.render_size}px -> {args.image_size}px)")
        pixels = render_training_set(scenes, args.image_size, args.render_size, args.workers, log)
        if args.cache:
            np.savez(args.cache, pixels=pixels, key=np.array(key))
    codes = np.stack([scene_codes(s) for s in scenes])
    objs = [[{n: getattr(o, n) for n in ATTRS} for o in s.objects] for s in scenes]
    return TrainingSet(scenes, pixels, codes, objs)


def initial_model(args, tokenizer, device: str):
    """A fresh model from the command's sizes, or ``--init``'s weights adapted to ``--image-size``."""
    if args.init:
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(args.init).float()
        return adapt_resolution(model, args.image_size, args.patch_size).to(device)
    return build_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, args).to(device)


def make_optimizer(model, args):
    """AdamW without decay on biases, norms and embeddings; linear warm-up, then cosine down to 2 %."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


class BatchSampler:
    """Batch indices: shuffled epochs, and with probability ``--hard-batches`` images of two colours only."""

    def __init__(self, codes: np.ndarray, args):
        self.args, self.n = args, len(codes)
        self.order = np.random.default_rng(args.seed + 1).permutation(self.n)
        self.cursor = 0
        self.hard_rng = np.random.default_rng(args.seed + 3)
        self.by_color = [np.flatnonzero(codes[:, 0, 0] == c) for c in range(len(world.COLORS))]

    def next(self, step: int) -> np.ndarray:
        bs = self.args.batch_size
        if self.cursor + bs > self.n:
            self.order = np.random.default_rng(self.args.seed + 2 + step).permutation(self.n)
            self.cursor = 0
        if self.hard_rng.random() < self.args.hard_batches:  # colour alone cannot match captions
            pool = np.concatenate([self.by_color[c] for c in self.hard_rng.choice(len(self.by_color), 2,
                                                                                  replace=False)])
            return self.hard_rng.choice(pool, bs, replace=False)
        idx = self.order[self.cursor : self.cursor + bs]
        self.cursor += bs
        return idx


def augmented_batch(data: TrainingSet, pix, codes_t, idx, image_processor, args):
    """Pixels and codes of a batch after random flips (labels follow) and grey images; their object dicts."""
    import torch

    x = pix[idx].float()
    c = codes_t[idx].clone()
    fx = torch.rand(len(idx)) < 0.5
    fy = torch.rand(len(idx)) < 0.5
    x[fx] = x[fx].flip(-1)
    x[fy] = x[fy].flip(-2)
    gray = torch.rand(len(idx)) < args.grayscale
    if gray.any():
        x[gray] = to_grayscale(x[gray], image_processor.image_mean, image_processor.image_std)
    batch_objs = []
    for k, i in enumerate(idx):
        ob = []
        for o in data.objs[i]:
            o = dict(o)
            if gray[k]:
                o["color"] = OFF_PALETTE
            if fx[k]:
                o["position"] = FLIP_X.get(o["position"], o["position"])
            if fy[k]:
                o["position"] = FLIP_Y.get(o["position"], o["position"])
            ob.append(o)
        for j, o in enumerate(ob):
            c[k, j, 3] = world.POSITIONS.index(o["position"])
            c[k, j, 0] = _code(0, o["color"])
        batch_objs.append(ob)
    return x, c, batch_objs


def batch_captions(batch_objs, bank, rnd: random.Random, no_bank: bool):
    """One fresh caption per image, then the bank of single-attribute captions; their constraint codes."""
    texts, cons = [], []
    for ob in batch_objs:
        t, cn = make_caption(ob, rnd)
        texts.append(t)
        cons.append(cn)
    if not no_bank:
        for obj, inc in bank:
            t, cn = make_caption([obj], rnd, inc)
            texts.append(t)
            cons.append(cn)
    return texts, np.stack(cons)


def soft_clip_loss(logits, pos):
    """CLIP loss with soft targets: uniform over every caption describing an image, and every image a caption
    describes (identical captions, less specific ones...).
    ``logits`` is [image, text], ``pos`` [text, image]."""
    import torch

    t_i2t = pos.T / pos.T.sum(1, keepdim=True)
    has = pos.sum(1) > 0  # a bank caption may describe no image of this batch
    t_t2i = pos[has] / pos[has].sum(1, keepdim=True)
    return 0.5 * (torch.sum(-t_i2t * logits.log_softmax(1), 1).mean()
                  + torch.sum(-t_t2i * logits.T[has].log_softmax(1), 1).mean())


def train(model, tokenizer, image_processor, data: TrainingSet, args, device: str, log) -> list[dict]:
    """The training loop; checkpoints every ``--save-every`` steps. Returns the logged loss history."""
    import torch

    opt, sched = make_optimizer(model, args)
    rnd = random.Random(args.seed)
    bank = label_bank()
    pix = torch.from_numpy(data.pixels)
    codes_t = torch.from_numpy(data.codes).long()
    sampler = BatchSampler(data.codes, args)
    model.train()
    t_train = time.time()
    run_loss = run_acc = 0.0
    history = []
    for step in range(args.steps):
        idx = sampler.next(step)
        x, c, batch_objs = augmented_batch(data, pix, codes_t, idx, image_processor, args)
        texts, cons = batch_captions(batch_objs, bank, rnd, args.no_bank)
        pos = positives(c, torch.from_numpy(cons).long()).float().to(device)  # [text, image]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=args.max_text_len,
                        return_tensors="pt")
        out = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                    pixel_values=x.to(device))
        logits = out.logits_per_image  # [image, text]
        loss = soft_clip_loss(logits, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
            hit = pos.T.gather(1, logits.argmax(1, keepdim=True)).mean().item()
        run_loss += loss.item()
        run_acc += hit
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            k = (step % args.log_every) + 1
            el = time.time() - t_train
            log(f"step {step + 1}/{args.steps} loss {run_loss / k:.3f} i2t-acc {run_acc / k:.3f} "
                f"scale {model.logit_scale.exp().item():.1f} lr {sched.get_last_lr()[0]:.2e} "
                f"({el / (step + 1):.2f}s/step)")
            history.append({"step": step + 1, "loss": round(run_loss / k, 4),
                            "i2t_acc": round(run_acc / k, 4)})
            run_loss = run_acc = 0.0
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            model.eval()
            save(model, tokenizer, image_processor, Path(args.out))
            model.train()
            log(f"checkpoint saved to {args.out}")
    return history


def training_record(args, argv, model, device: str, quality, history, times: dict) -> dict:
    """What ``training.json`` says: the run's settings, model, measured quality and timings."""
    import torch

    info = {
        "seed": args.seed,
        "eval_seed": EVAL_SEED,
        "train_images": args.train_size,
        "two_object_prob": args.two_object_prob,
        "label_bank_captions": 0 if args.no_bank else len(label_bank()),
        "init": args.init,
        "init_resolution": ({k: _init_vision(args.init)[k] for k in ("image_size", "patch_size")}
                            if args.init else None),
        "hard_batches": args.hard_batches,
        "off_palette": args.off_palette,
        "grayscale": args.grayscale,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup": args.warmup,
        "device": device,
        "torch_threads": args.threads,
        "dtype": "float16" if args.fp16 else "float32",
        "heldout_combos": [list(c) for c in world.HELDOUT_COMBOS],
        "config": _describe(model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "quality": quality,
        "render_seconds": round(times["render"], 1),
        "train_seconds": round(times["train"], 1),
        "wall_seconds": round(times["wall"], 1),
        "command": "python -m pixdex.demo.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
        "loss_history": history,
    }
    if args.init and (Path(args.init) / "training.json").is_file():  # a continuation: keep the earlier record
        earlier = json.loads((Path(args.init) / "training.json").read_text())
        earlier.pop("loss_history", None)
        info["continued_from"] = earlier
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.time()
    args.threads = pick_threads(args.threads)

    def log(msg):
        print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)

    data = load_training_set(args, log)
    t_render = time.time() - t_start
    log(f"rendered in {t_render:.0f}s: {data.pixels.shape} {data.pixels.dtype}")

    import torch

    from pixdex.demo.tokenizer import build_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer(args.max_text_len)
    image_processor = build_image_processor(args.image_size)
    model = initial_model(args, tokenizer, device)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {device}")

    t_train = time.time()
    history = train(model, tokenizer, image_processor, data, args, device, log)
    t_train = time.time() - t_train

    out_dir = Path(args.out)
    model.eval()
    model = model.cpu()
    if args.fp16:
        model = model.half()
    save(model, tokenizer, image_processor, out_dir)
    log(f"saved to {out_dir}")

    quality = None
    if not args.no_eval:
        from pixdex.demo import quality as q

        kw = {"n": args.eval_n} if args.eval_n else {}
        quality = q.evaluate(str(out_dir), **kw)
        log(f"quality: {json.dumps(quality)}")
    times = {"render": t_render, "train": t_train, "wall": time.time() - t_start}
    info = training_record(args, argv, model, device, quality, history, times)
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log(f"done in {info['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
